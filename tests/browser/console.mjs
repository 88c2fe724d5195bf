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

await browser.close();
const passed = results.filter(Boolean).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(passed === results.length ? 0 : 1);
