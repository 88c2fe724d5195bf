// The unmodified ComfyUI frontend through comfygate, in headless Chromium.
// Run by tests/browser/run, which starts the simulator (serving the frontend) and the gateway and
// passes GATEWAY_URL, USER_A/PASS_A, USER_B/PASS_B, CHROMIUM and SCREENSHOT_DIR.
import { chromium } from 'playwright-core';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

const base = process.env.GATEWAY_URL;
const shots = process.env.SCREENSHOT_DIR || '/tmp';
const alice = { name: process.env.USER_A, password: process.env.PASS_A };
const bob = { name: process.env.USER_B, password: process.env.PASS_B };
const STEP_MS = 60_000;
const WORKFLOW = `workflows/browser-test-${Date.now()}.json`;
const WORKFLOW_NAME = WORKFLOW.slice('workflows/'.length);
const SVG_MARK = `svg-script-ran-${Date.now()}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  timeout: STEP_MS,
});

/** A browser context for one user, recording console errors and failed API responses. */
async function session(user) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (r.status() >= 400) problems.push(`${r.request().method()} ${u.pathname}${u.search} -> ${r.status()}`);
  });
  return { user, context, page, problems };
}

/** Logs in through the gateway's /login page, from wherever the gateway sends a stranger. */
async function login(s) {
  await s.page.goto(`${base}/`);
  await s.page.waitForURL(/\/login/);
  await s.page.fill('#username', s.user.name);
  await s.page.fill('#password', s.user.password);
  await Promise.all([s.page.waitForURL((u) => !u.pathname.startsWith('/login')), s.page.click('button[type=submit]')]);
}

/** Waits until the ComfyUI app has booted: its graph exists and its canvas is on the page. */
async function frontendLoaded(s) {
  await s.page.waitForFunction(
    () => window.app?.graph && window.app?.api && document.querySelector('canvas#graph-canvas, canvas'),
    null,
    { timeout: STEP_MS },
  );
  await s.page.locator('canvas').first().waitFor({ state: 'visible' });
}

/** The saved workflow files the frontend lists for the logged-in user (its own API calls). */
async function listedWorkflows(s) {
  return s.page.evaluate(async () => {
    const files = await window.app.api.listUserDataFullInfo('workflows');
    return files.map((f) => f.path);
  });
}

const results = [];
async function scenario(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`PASS ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`);
    for (const [c, ctx] of browser.contexts().entries()) {
      for (const [i, p] of ctx.pages().entries()) {
        const file = path.join(shots, `${name}-${c}-${i}.png`);
        await p.screenshot({ path: file }).catch(() => {});
        console.log(`  screenshot: ${file}`);
      }
    }
  }
}
function check(cond, msg) { if (!cond) throw new Error(msg); }

const a = await session(alice);
let loaded = false;

await scenario('login_then_comfyui_frontend_loads_through_the_gateway', async () => {
  await login(a);
  await frontendLoaded(a);
  loaded = true;
  await a.page.waitForTimeout(1500); // let the first frame and the side panels settle for the screenshot
  await a.page.screenshot({ path: path.join(shots, 'frontend-loaded.png') });
  console.log(`  screenshot: ${path.join(shots, 'frontend-loaded.png')}`);
  const apiProblems = a.problems.filter((p) => / -> (4|5)\d\d$/.test(p));
  if (apiProblems.length) console.log(`  requests answered >= 400 while booting:\n    ${apiProblems.join('\n    ')}`);
});

await scenario('inside_comfyui_the_user_sees_their_name_and_links_to_the_account_page_and_log_out', async () => {
  check(loaded, 'the frontend did not load');
  const box = a.page.locator('#comfygate-account');
  await box.waitFor({ state: 'visible', timeout: STEP_MS });
  const text = await box.innerText();
  check(text.includes(alice.name), `the name is shown: ${text}`);
  const hrefs = await box.locator('a').evaluateAll((links) => links.map((l) => l.getAttribute('href')));
  check(hrefs.includes('/comfygate/account') && hrefs.includes('/logout'), `links: ${hrefs}`);
  await a.page.screenshot({ path: path.join(shots, 'frontend-account-link.png') });
  console.log(`  screenshot: ${path.join(shots, 'frontend-account-link.png')}`);
});

await scenario('saved_workflow_is_listed_again_after_reload', async () => {
  check(loaded, 'the frontend did not load');
  const saved = await a.page.evaluate(async (file) => {
    const workflow = window.app.graph.serialize();
    const r = await window.app.api.storeUserData(file, workflow, { overwrite: true, stringify: true, throwOnError: false, full_info: true });
    return { status: r.status, body: await r.text() };
  }, WORKFLOW);
  check(saved.status === 200, `POST /api/userdata/${encodeURIComponent(WORKFLOW)} answered ${saved.status}: ${saved.body}`);
  await a.page.reload();
  await frontendLoaded(a);
  // In the UI: the workflows side panel lists it (by name, without ".json").
  await a.page.keyboard.press('Escape'); // the first-run templates dialog, if shown
  const tab = a.page.locator('[data-testid="workflows-tab-button"]');
  if (await tab.count()) {
    await tab.first().click();
    const label = WORKFLOW_NAME.replace(/\.json$/, '');
    await a.page.getByText(label).first().waitFor({ state: 'visible', timeout: 15_000 })
      .catch(() => { throw new Error(`after reload, the workflows panel does not show ${label}`); });
    await a.page.screenshot({ path: path.join(shots, 'workflows-panel.png') });
  } else {
    console.log('  no workflows panel button ([data-testid="workflows-tab-button"]): checking through the API only');
  }
  const listed = await listedWorkflows(a);
  check(listed.includes(WORKFLOW_NAME), `after reload, GET /api/userdata?dir=workflows lists ${JSON.stringify(listed)}, not ${WORKFLOW_NAME}`);
  const back = await a.page.evaluate(async (file) => {
    const r = await window.app.api.getUserData(file);
    return { status: r.status, text: await r.text() };
  }, WORKFLOW);
  check(back.status === 200 && back.text.includes('"nodes"'), `GET /api/userdata/${encodeURIComponent(WORKFLOW)} answered ${back.status}`);
  const v2 = await a.page.evaluate(async () => {
    const r = await window.app.api.fetchApi('/v2/userdata?path=workflows');
    return { status: r.status, body: r.ok ? await r.json() : null };
  });
  check(v2.status === 200 && v2.body.some((e) => e.name === WORKFLOW_NAME), `GET /api/v2/userdata?path=workflows answered ${v2.status}: ${JSON.stringify(v2.body)}`);
});

const b = await session(bob);
await scenario('second_user_does_not_see_the_first_users_workflow', async () => {
  await login(b);
  await frontendLoaded(b);
  const listed = await listedWorkflows(b);
  check(!listed.includes(WORKFLOW_NAME), `${bob.name} sees ${alice.name}'s workflow in GET /api/userdata?dir=workflows: ${JSON.stringify(listed)}`);
  const direct = await b.page.evaluate(async (file) => (await window.app.api.getUserData(file)).status, WORKFLOW);
  check(direct !== 200, `${bob.name} reads ${alice.name}'s workflow: GET /api/userdata/${encodeURIComponent(WORKFLOW)} answered 200`);
  const v2 = await b.page.evaluate(async () => {
    const r = await window.app.api.fetchApi('/v2/userdata?path=workflows');
    return r.ok ? (await r.json()).map((e) => e.name) : [];
  });
  check(!v2.includes(WORKFLOW_NAME), `${bob.name} sees ${alice.name}'s workflow in GET /api/v2/userdata: ${JSON.stringify(v2)}`);
});

/** Opens /view of an SVG in a fresh tab of `s`; throws if its script ran or the answer is active. */
async function openSvgSafely(s, view) {
  const page = await s.context.newPage();
  const ran = [];
  page.on('console', (m) => { if (m.text().includes(SVG_MARK)) ran.push('console'); });
  page.on('dialog', (d) => { ran.push('dialog'); d.dismiss().catch(() => {}); });
  const headers = await s.context.request.get(`${base}${view}`).then((r) => ({ status: r.status(), h: r.headers() }));
  await page.goto(`${base}${view}`).catch(() => {}); // an attachment starts a download instead of a page
  await page.waitForTimeout(1000);
  const titled = await page.evaluate((mark) => document.title === mark || !!document.getElementById(mark), SVG_MARK).catch(() => false);
  await page.close();
  check(ran.length === 0 && !titled, `opening ${view} ran the SVG's script (${ran.join(', ') || 'DOM changed'})`);
  if (headers.status === 200) {
    const h = headers.h;
    const inert = /attachment/i.test(h['content-disposition'] || '') ||
      ((h['x-content-type-options'] || '').toLowerCase() === 'nosniff' && /sandbox/i.test(h['content-security-policy'] || ''));
    check(inert, `${view} answered 200 without attachment or nosniff+sandbox CSP: ${JSON.stringify(h)}`);
  }
  return headers.status;
}

await scenario('another_users_uploaded_svg_runs_no_script_when_opened', async () => {
  check(loaded, 'the frontend did not load');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>` +
    `console.log('${SVG_MARK}'); document.title='${SVG_MARK}'; alert('${SVG_MARK}');` +
    `</script><rect id="r" width="10" height="10"/></svg>`;
  const up = await a.page.evaluate(async (svg) => {
    const form = new FormData();
    form.append('image', new Blob([svg], { type: 'image/svg+xml' }), 'browser-test.svg');
    form.append('overwrite', 'true');
    const r = await window.app.api.fetchApi('/upload/image', { method: 'POST', body: form });
    return { status: r.status, body: r.ok ? await r.json() : await r.text() };
  }, svg);
  let view = '/view?filename=browser-test.svg&type=input';
  if (up.status === 200) {
    const q = new URLSearchParams({ filename: up.body.name, type: up.body.type || 'input', subfolder: up.body.subfolder || '' });
    view = `/view?${q}`;
  } else {
    console.log(`  the gateway refused the SVG upload (${up.status}); opening ${view} anyway`);
  }
  const asOwner = await openSvgSafely(a, view);
  const asOther = await openSvgSafely(b, view);
  const plain = await openSvgSafely(b, '/view?filename=browser-test.svg&type=input');
  console.log(`  ${view}: ${asOwner} for ${alice.name}, ${asOther} for ${bob.name}; plain name: ${plain} for ${bob.name}`);
});

await scenario('a_disabled_users_open_comfyui_tab_goes_to_the_login_page_which_says_why', async () => {
  check(loaded, 'the frontend did not load');
  await b.page.goto(`${base}/`);
  await frontendLoaded(b);
  execFileSync(process.env.GW_BIN, ['--config', process.env.GW_CONFIG, 'user', 'disable', bob.name], { stdio: 'ignore' });
  await b.page.reload();
  await b.page.waitForURL(/\/login/);
  const notice = await b.page.locator('.notice').innerText();
  check(notice.includes('This account is disabled'), `the reason is shown: ${notice}`);
  await b.page.screenshot({ path: path.join(shots, 'login-after-disable.png') });
  execFileSync(process.env.GW_BIN, ['--config', process.env.GW_CONFIG, 'user', 'enable', bob.name], { stdio: 'ignore' });
});

await browser.close();
const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
