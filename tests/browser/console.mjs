// The operator's console in headless Chromium: every page loads under its CSP with no console
// error, the live refresh runs, a form is Post/Redirect/Get, and a screenshot of each page is
// saved. Run by tests/browser/run (or alone: GATEWAY_URL, ADMIN_USER, ADMIN_PASS, CHROMIUM,
// SCREENSHOT_DIR). Prints "N passed, M failed" last.
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs';

const base = process.env.GATEWAY_URL;
const shots = process.env.SCREENSHOT_DIR || 'target/screenshots';
const admin = { name: process.env.ADMIN_USER || 'admin', password: process.env.ADMIN_PASS };
const STEP_MS = 30_000;
fs.mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  timeout: STEP_MS,
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
context.setDefaultTimeout(STEP_MS);
const page = await context.newPage();
const problems = [];
page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));

const results = [];
async function scenario(name, fn) {
  problems.length = 0;
  try {
    await fn();
    if (problems.length) throw new Error(problems.join('; '));
    results.push(true);
    console.log(`PASS console: ${name}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL console: ${name}: ${e.message.split('\n')[0]}`);
    await page.screenshot({ path: path.join(shots, `console-failed-${name}.png`), fullPage: true }).catch(() => {});
  }
}

await scenario('login leads back to the console', async () => {
  await page.goto(`${base}/comfygate/admin/`);
  await page.waitForURL(/\/login/);
  await page.fill('#username', admin.name);
  await page.fill('#password', admin.password);
  await Promise.all([page.waitForURL(/\/comfygate\/admin\/$/), page.click('button[type=submit]')]);
});

for (const [name, url, live] of [
  ['backends', '/comfygate/admin/', true],
  ['queue', '/comfygate/admin/queue', true],
  ['users', '/comfygate/admin/users', false],
  ['user', `/comfygate/admin/users/${admin.name}`, false],
  ['audit', '/comfygate/admin/audit', false],
]) {
  await scenario(`${name} page`, async () => {
    await page.goto(`${base}${url}`);
    await page.locator('nav.console a.here').waitFor();
    if (live) {
      // The gateway's own script runs under the page's CSP and refreshes the section.
      await page.waitForFunction(() => document.getElementById('live-status')?.textContent.startsWith('live ·'));
    }
    await page.screenshot({ path: path.join(shots, `console-${name}.png`), fullPage: true });
  });
}

await scenario('creating a user shows the password once', async () => {
  await page.goto(`${base}/comfygate/admin/users`);
  await page.fill('#username', `browser-${Date.now()}`);
  await Promise.all([page.waitForURL(/\/comfygate\/admin\/users$/), page.click('form[action="/comfygate/admin/users"] button')]);
  const secret = await page.locator('#one-time-secret').textContent();
  if (!secret || secret.length < 20) throw new Error(`no password shown: ${secret}`);
  await page.screenshot({ path: path.join(shots, 'console-user-created.png'), fullPage: true });
  await page.reload();
  if (await page.locator('#one-time-secret').count()) throw new Error('the password is shown again after a reload');
});

await scenario('a token made on the account page is shown once and a reload makes no second one', async () => {
  const name = `browser-token-${Date.now()}`;
  await page.goto(`${base}/comfygate/account`);
  await page.fill('#name', name);
  const password = page.locator('#token-password');
  if (admin.password) await password.fill(admin.password);
  await Promise.all([page.waitForURL(/\/comfygate\/account$/), page.click('form[action="/comfygate/account/tokens"] button')]);
  const secret = await page.locator('#one-time-secret').textContent();
  if (!secret || !secret.startsWith('cg_')) throw new Error(`no token shown: ${secret}`);
  await page.screenshot({ path: path.join(shots, 'account-token-created.png'), fullPage: true });
  await page.reload();
  if (await page.locator('#one-time-secret').count()) throw new Error('the token is shown again after a reload');
  const rows = await page.locator('table tr', { hasText: name }).count();
  if (rows !== 1) throw new Error(`${rows} tokens named ${name} after the reload`);
});

await scenario('both backends are shown and a job goes from waiting to running to done with its owners name', async () => {
  await page.goto(`${base}/comfygate/admin/`);
  for (const name of ['sim', 'b2']) await page.locator(`tr.backend[data-backend="${name}"]`).waitFor();
  // Three jobs of 4 s on two backends of one slot each: one must wait.
  const ids = await page.evaluate(async () => {
    const out = [];
    for (let i = 0; i < 3; i++) {
      const prompt = {
        1: { class_type: 'EmptyImage', inputs: { width: 8, height: 8, batch_size: 1, color: i } },
        2: { class_type: 'SaveImage', inputs: { images: ['1', 0], filename_prefix: 'console-browser' } },
      };
      const r = await fetch('/prompt', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt, extra_data: { sim_duration_ms: 4000 } }),
      });
      out.push((await r.json()).prompt_id);
    }
    return out;
  });
  if (ids.some((id) => !id)) throw new Error(`not every job was accepted: ${ids}`);
  await page.goto(`${base}/comfygate/admin/queue`);
  const states = new Set();
  const last = ids[2];
  const deadline = Date.now() + 25_000;
  while (Date.now() < deadline) {
    const row = page.locator(`tr.job[data-job="${last}"]`);
    if (await row.count()) {
      const owner = await row.locator('.owner').innerText();
      if (owner !== admin.name) throw new Error(`owner shown as ${owner}`);
      states.add(await row.locator('.state').innerText());
      if ([...states].some((x) => x.startsWith('waiting')) && !(await page.locator('#queue-empty').count())) {
        await page.screenshot({ path: path.join(shots, 'console-queue-jobs.png'), fullPage: true });
      }
    } else if (states.size && (await page.locator('#queue-empty').count())) {
      states.add('done');
      break;
    }
    await page.waitForTimeout(250);
  }
  const seen = [...states].join(', ');
  const waited = [...states].some((x) => x.startsWith('waiting'));
  if (!waited || !states.has('running') || !states.has('done')) throw new Error(`states seen: ${seen}`);
});

await scenario('a locked-out user is unlocked from their page and then logs in', async () => {
  const carol = { name: process.env.USER_C || 'carol', password: process.env.PASS_C };
  const other = await browser.newContext();
  try {
    // Wrong passwords through the login form, as a browser sends them, until the lockout.
    const p = await other.newPage();
    for (let i = 0; i < 8; i++) {
      await p.goto(`${base}/login`);
      await p.fill('#username', carol.name);
      await p.fill('#password', 'wrong-password');
      await p.click('button[type=submit]');
      await p.waitForLoadState();
    }
    await page.goto(`${base}/comfygate/admin/users/${carol.name}`);
    const unlock = page.locator(`form[action$="/users/${carol.name}/unlock"] button`);
    await unlock.waitFor();
    await Promise.all([page.waitForURL(new RegExp(`/comfygate/admin/users/${carol.name}$`)), unlock.click()]);
    await page.screenshot({ path: path.join(shots, 'console-user-unlocked.png'), fullPage: true });
    await p.goto(`${base}/login`);
    await p.fill('#username', carol.name);
    await p.fill('#password', carol.password);
    await Promise.all([p.waitForURL((u) => !u.pathname.startsWith('/login')), p.click('button[type=submit]')]);
  } finally {
    await other.close();
  }
});

await browser.close();
const passed = results.filter(Boolean).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(passed === results.length ? 0 : 1);
