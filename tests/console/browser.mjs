// Drives the voxgate web console in Debian's headless Chromium with playwright-core.
// Started by tests/console.rs while a real SIPp call is up; every step must pass or the
// script exits 1 (after a failure screenshot). The last stdout line is a JSON summary.
//
// Environment: VOXGATE_URL (http://127.0.0.1:port), VOXGATE_TOKEN, VOXGATE_CALL_ID (the live
// call), VOXGATE_ARTIFACTS (dir for screenshots), CHROMIUM (default /usr/bin/chromium).

import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs';

const base = process.env.VOXGATE_URL;
const token = process.env.VOXGATE_TOKEN;
const callId = process.env.VOXGATE_CALL_ID;
const artifacts = process.env.VOXGATE_ARTIFACTS;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
for (const [k, v] of Object.entries({ VOXGATE_URL: base, VOXGATE_TOKEN: token, VOXGATE_CALL_ID: callId, VOXGATE_ARTIFACTS: artifacts })) {
  if (!v) {
    console.error(`missing ${k}`);
    process.exit(2);
  }
}
fs.mkdirSync(artifacts, { recursive: true });

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  log('ok:', what);
}
const sel = (s) => s.replace(/["\\]/g, '\\$&');

const summary = { ok: false };
const pageErrors = [];
const audioResponses = [];

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The flags that work on these machines (closed network, root, no GPU): see
  // /work/.library/env/machines/rust.md; autoplay so play() needs no gesture.
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
const page = await context.newPage();
page.setDefaultTimeout(20000);
page.on('pageerror', (e) => { pageErrors.push(String(e)); log('page error:', String(e)); });
page.on('console', (m) => { if (m.type() === 'error') log('console error:', m.text()); });
page.on('response', (r) => {
  if (r.url().includes('/audio')) audioResponses.push({ status: r.status(), range: r.request().headers().range || null });
});

async function statuses(paths) {
  return page.evaluate(async (ps) => Promise.all(ps.map(async (p) => (await fetch(p)).status)), paths);
}

try {
  // --- 1. no session: the login form, and the API refuses --------------------------------
  await page.goto(`${base}/console`);
  await page.waitForSelector('#login-form');
  check((await page.locator('#calls-table').count()) === 0, 'without a session only the login form is shown');
  const refused = await statuses(['/v1/calls', '/v1/recordings', '/v1/trunks', '/v1/cdrs', '/v1/events', '/v1/calls/stream',
    `/v1/calls/${encodeURIComponent(callId)}/transcript`, '/v1/tables', '/console/assets/console.js']);
  check(refused.every((s) => s === 401), `API calls without the token fail with 401 (${refused.join(',')})`);

  await page.fill('#token', 'not-the-token');
  await page.click('#login');
  await page.waitForSelector('#login-error');
  check((await page.locator('#calls-table').count()) === 0, 'a wrong token keeps the login form');

  // --- 2. log in ---------------------------------------------------------------------------
  await page.fill('#token', token);
  await page.click('#login');
  await page.waitForSelector('#calls-table');
  await page.waitForSelector('#sse-status.live');
  check(true, 'logged in; live-calls stream connected');

  // --- 3. the live call: pause, resume, hang up --------------------------------------------
  const row = page.locator(`#calls-table tr[data-call-id="${sel(callId)}"]`);
  await row.waitFor();
  await page.waitForFunction((id) => {
    const r = document.querySelector(`#calls-table tr[data-call-id="${id}"]`);
    return r && r.querySelector('td.duration').textContent.trim() !== '';
  }, sel(callId));
  check(true, `live call ${callId} listed with its duration`);
  await row.locator('button.pause').click();
  await row.locator('td.paused', { hasText: 'yes' }).waitFor();
  check(true, 'pause button: the call shows paused (pushed by the stream)');
  await row.locator('button.resume').click();
  await row.locator('td.paused', { hasText: 'no' }).waitFor();
  check(true, 'resume button: the call shows running');
  const recLink = row.locator('a', { hasText: 'rec_' });
  await recLink.waitFor();
  const recId = (await recLink.textContent()).trim();
  check(recId.startsWith('rec_'), `the call is recording (${recId})`);
  // Let the recording hold a few seconds of the greeting.
  await page.waitForTimeout(3000);
  await row.locator('button.hangup').click();
  await row.locator('button.hangup', { hasText: 'Confirm' }).waitFor();
  await row.locator('button.hangup').click();
  await row.waitFor({ state: 'detached', timeout: 15000 });
  check(true, 'hang-up button (confirmed): the call left the live list');

  // --- 4. the recording: search, open, waveform, play --------------------------------------
  await page.click('nav a[data-tab="recordings"]');
  await page.fill('#rec-search', callId);
  let recRow = null;
  for (let i = 0; i < 30; i += 1) {
    await page.press('#rec-search', 'Enter');
    await page.waitForTimeout(500);
    const r = page.locator(`#rec-table tr[data-id="${sel(recId)}"][data-status="complete"]`);
    if (await r.count()) { recRow = r; break; }
  }
  check(recRow !== null, 'search by call id finds the finished recording');
  const listed = await page.locator('#rec-table tbody tr').count();
  check(listed === 1, `the search lists exactly this call's recording (${listed})`);
  await recRow.click();
  await page.waitForSelector('#rec-detail:not([hidden])');
  await page.waitForSelector('#waveform[data-state="drawn"]');
  const lanes = await page.getAttribute('#waveform', 'data-lanes');
  check(lanes === '2', 'two-lane waveform (caller and bot) drawn from the peaks');

  // The call's real transcript (GET /v1/calls/{id}/transcript), listed and marked on the
  // timeline: tests/console.rs waited for the greeting prompt, the key "4" and the `code` step.
  const transcriptStatus = (await statuses([`/v1/calls/${encodeURIComponent(callId)}/transcript`]))[0];
  check(transcriptStatus === 200, `the transcript endpoint answers (${transcriptStatus})`);
  await page.waitForFunction(() => document.querySelectorAll('#transcript li[data-kind="step"]').length > 0);
  const kinds = await page.$$eval('#transcript li', (lis) => lis.map((li) => li.dataset.kind));
  check(['call', 'recording', 'prompt', 'dtmf', 'step'].every((k) => kinds.includes(k)),
    `transcript lists the answer, the recording, the prompt, the key and the step (${kinds.join(',')})`);
  const callLines = await page.$$eval('#transcript li[data-kind="call"]', (lis) => lis.map((li) => li.textContent));
  check(callLines.some((t) => t.includes('Call answered')) && callLines.some((t) => t.includes('Call ended: operator_hangup')),
    `the call's answer and end are in it (${callLines.join(' | ')})`);
  const keyLine = (await page.locator('#transcript li[data-kind="dtmf"]').first().textContent()).trim();
  check(keyLine.includes('Caller pressed 4'), `the key reads as the caller's (${keyLine})`);
  const stepLine = (await page.locator('#transcript li[data-kind="step"]').first().textContent()).trim();
  check(stepLine.includes('Step code: ok'), `the integration step reads with its outcome (${stepLine})`);
  const stepColour = await page.$eval('#transcript li[data-kind="step"]', (li) => li.classList.contains('k-step'));
  check(stepColour, 'integration steps have their own colour');
  const markers = Number(await page.getAttribute('#waveform', 'data-markers'));
  const inside = await page.$$eval('#transcript li', (lis) => lis.filter((li) => Number(li.dataset.sec) >= 0).length);
  check(markers >= 3 && markers <= inside,
    `transcript events marked on the timeline (${markers} of ${kinds.length}; ${inside} start inside the recording)`);
  summary.markers = markers;
  summary.transcript_kinds = kinds;
  // Clicking an entry seeks the player to it.
  const keySec = Number(await page.getAttribute('#transcript li[data-kind="dtmf"]', 'data-sec'));
  await page.click('#transcript li[data-kind="dtmf"]');
  await page.waitForFunction((sec) => Math.abs(document.querySelector('#player').currentTime - sec) < 0.3, keySec);
  check(true, `clicking the key press seeks the player to it (${keySec.toFixed(2)} s)`);
  summary.transcript_status = transcriptStatus;

  await page.evaluate(() => document.querySelector('#player').play());
  await page.waitForFunction(() => {
    const p = document.querySelector('#player');
    return p.ended || p.currentTime > 0.3;
  }, null, { timeout: 20000 });
  const duration = await page.evaluate(() => document.querySelector('#player').duration);
  check(duration > 1, `the audio element loaded the recording (${duration.toFixed(2)} s)`);
  // Jump close to the end (a new Range request) and let it finish.
  await page.evaluate(() => { const p = document.querySelector('#player'); p.currentTime = Math.max(0, p.duration - 0.6); });
  let ended = true;
  try {
    await page.waitForFunction(() => document.querySelector('#player').ended, null, { timeout: 15000 });
  } catch (_) {
    ended = false;
  }
  const played = await page.evaluate(() => document.querySelector('#player').currentTime);
  check(ended || played > 0, `playback reached ${ended ? '`ended`' : `currentTime ${played}`}`);
  const partial = audioResponses.filter((r) => r.status === 206);
  check(partial.length > 0, `the player streamed through the Range API (${audioResponses.map((r) => r.status).join(',')})`);
  summary.ended = ended;
  summary.current_time = played;
  summary.duration = duration;
  summary.audio_responses = audioResponses.length;

  await page.waitForTimeout(200);
  const shot = path.join(artifacts, 'console-recording.png');
  await page.screenshot({ path: shot, fullPage: true });
  summary.screenshot = shot;
  log('screenshot:', shot);

  // --- 5. CDR and events of the call --------------------------------------------------------
  await page.click('#rec-records-link');
  const cdrRow = page.locator(`#cdr-table tr[data-call-id="${sel(callId)}"]`);
  await cdrRow.waitFor();
  const cdrRows = await page.locator('#cdr-table tbody tr').count();
  const reason = (await cdrRow.locator('td.end-reason').textContent()).trim();
  check(cdrRows === 1 && reason.length > 0, `CDR filtered by call (${cdrRows} row, end reason ${reason})`);
  summary.end_reason = reason;
  const keyEvent = page.locator(`#events-table tr[data-call-id="${sel(callId)}"][data-name="console_key"]`);
  await keyEvent.waitFor();
  check(true, "the flow's tracked event for the key is listed with the call");
  const recordsShot = path.join(artifacts, 'console-records.png');
  await page.screenshot({ path: recordsShot, fullPage: true });
  summary.records_screenshot = recordsShot;

  await page.click('nav a[data-tab="trunks"]');
  await page.waitForSelector('#trunks-empty:not([hidden])');
  check(true, 'trunks tab (none configured)');

  // --- 6. sign out: the login form again, the API refuses ------------------------------------
  await page.click('#logout');
  await page.waitForSelector('#login-form');
  const after = await statuses(['/v1/calls', '/v1/recordings']);
  check(after.every((s) => s === 401), 'after sign-out the API answers 401 again');

  check(pageErrors.length === 0, `no JavaScript errors (${pageErrors.join(' | ')})`);
  summary.ok = true;
} catch (e) {
  log('FAILED:', e.stack || String(e));
  const shot = path.join(artifacts, 'console-failure.png');
  try { await page.screenshot({ path: shot, fullPage: true }); log('failure screenshot:', shot); } catch (_) { /* ignore */ }
  summary.error = String(e);
  summary.failure_screenshot = shot;
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
