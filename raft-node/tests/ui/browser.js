// The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by
// npm's playwright-core), run by raft-node/tests/ui_browser.rs.
//
// The Rust test owns the cluster and every process; this script owns the
// browser. When the script needs something done to the cluster (allocate,
// kill an agent, kill the leader, register many providers), it prints
//   STEP {"action": ..., ...}
// and waits for the test's one-line JSON answer on stdin. It prints
//   RESULT {...}
// for what the test checks or reports, and exits non-zero on the first
// failed expectation. Every wait is bounded.
//
// Config (QM_UI_CONFIG, JSON): playwright, scenario ("cluster" | "tls"),
// urls {id: "http://127.0.0.1:port"}, leader, screenshots (a directory),
// and for "tls": certs {name: {cert, key}}, ca.
'use strict';
const readline = require('readline');
const config = JSON.parse(process.env.QM_UI_CONFIG);
const { chromium } = require(config.playwright);

/** One wait for the page (selector, text, state) may take this long. */
const WAIT_MS = 20000;
/** The whole script may take this long; then it fails. */
const SCRIPT_MS = 150000;
setTimeout(() => {
  console.error('browser.js: did not finish in time');
  process.exit(3);
}, SCRIPT_MS).unref();

const answers = [];
const waiting = [];
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const value = JSON.parse(line);
  if (waiting.length) waiting.shift()(value);
  else answers.push(value);
});

/** Asks the test to do `action` to the cluster; resolves to its answer. */
function step(action, args = {}) {
  console.log(`STEP ${JSON.stringify({ action, ...args })}`);
  return new Promise((resolve) => (answers.length ? resolve(answers.shift()) : waiting.push(resolve)));
}

function result(value) {
  console.log(`RESULT ${JSON.stringify(value)}`);
}

function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

/** Waits until `read()` (run in the page) returns a truthy value; returns it. */
async function until(page, what, read, arg) {
  try {
    const handle = await page.waitForFunction(read, arg, { timeout: WAIT_MS, polling: 100 });
    return await handle.jsonValue();
  } catch (error) {
    const shot = `${config.screenshots}/failed-${what.replace(/\W+/g, '-')}.png`;
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    throw new Error(`waited ${WAIT_MS} ms for ${what} (screenshot ${shot}): ${error.message}`);
  }
}

const text = (page, selector) => page.$eval(selector, (e) => e.textContent.trim());

async function open(page, url, view) {
  await page.goto(url);
  await until(page, `view ${view}`, (v) => document.querySelector(`main[data-ready="${v}"]`) !== null, view);
}

async function shoot(page, name) {
  await page.screenshot({ path: `${config.screenshots}/${name}.png`, fullPage: true });
}

function watchErrors(page, errors) {
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (message) => {
    // A 404 is an answer the page shows (another namespace's request), not a fault.
    const answered404 = message.text().includes('status of 404');
    if (message.type() === 'error' && !answered404) errors.push(message.text());
  });
}

async function clusterScenario(browser) {
  const errors = [];
  const leaderUrl = config.urls[config.leader];
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  watchErrors(page, errors);

  // --- the overview shows the right counts
  await open(page, `${leaderUrl}/ui/#/overview`, 'overview');
  await until(page, 'three providers, two allocations', () => {
    const n = (id) => document.querySelector(`[data-testid="${id}"]`)?.textContent;
    return n('count-providers') === '3' && n('count-active') === '3' && n('count-failed') === '0' && n('count-allocations') === '2';
  });
  const roles = await page.$$eval('[data-testid="replica-role"]', (cells) => cells.map((c) => c.textContent));
  expect(roles.length === 3 && roles.filter((r) => r === 'leader').length === 1, `replica roles ${roles}`);
  await until(page, 'every replica healthy', () => [...document.querySelectorAll('[data-testid="replica-health"]')].every((c) => c.textContent === 'healthy'));
  await page.waitForTimeout(2500); // a second chart sample
  await shoot(page, 'overview');

  // --- a new allocation appears without a reload
  await open(page, `${leaderUrl}/ui/#/allocations`, 'allocations');
  const rowsBefore = await page.$$eval('[data-testid="allocation-row"]', (rows) => rows.length);
  expect(rowsBefore === 2, `allocation rows before: ${rowsBefore}`);
  const navigations = [];
  page.on('framenavigated', (frame) => frame === page.mainFrame() && navigations.push(frame.url()));
  const allocated = await step('allocate', { provider: 'node_2' });
  await until(page, 'the new allocation in the table', (id) => document.querySelector(`tr[data-request="${id}"]`) !== null, allocated.request_id);
  expect(navigations.length === 0, `the page reloaded: ${navigations}`);
  await shoot(page, 'allocations');

  // --- from the allocation to its provider and back
  await page.click(`tr[data-request="${allocated.request_id}"] a[href^="#/providers"]`);
  await until(page, 'the provider view filtered to node_2', () => document.querySelector('main[data-ready="providers"]') &&
    document.querySelectorAll('[data-testid="provider-row"]').length === 1 && document.querySelector('[data-provider="node_2"]'));
  await page.click('[data-provider="node_2"] [data-testid="allocations-link"]');
  await until(page, "node_2's allocations", (id) => document.querySelector('main[data-ready="allocations"]') &&
    document.querySelector(`tr[data-request="${id}"]`), allocated.request_id);
  const onNode2 = await page.$$eval('[data-testid="allocation-row"]', (rows) => rows.length);

  // --- one request: its state history, then released after confirming
  await open(page, `${leaderUrl}/ui/#/request/${allocated.request_id}`, 'request');
  await until(page, 'the request held', () => ['allocation', 'monitoring'].includes(document.querySelector('[data-testid="request-state"]')?.textContent));
  const steps = await page.$$eval('[data-testid="history-step"]', (items) => items.map((i) => i.textContent.replace(/\s+/g, ' ').trim()));
  expect(steps.length >= 1 && steps[0].includes('allocation_granted') && steps[0].includes('request_processing'), `history ${steps}`);
  await shoot(page, 'request');
  await page.click('#release');
  await until(page, 'the confirmation dialog', () => document.querySelector('#confirm').open);
  await page.click('#confirm-cancel');
  expect(await text(page, '[data-testid="request-state"]') !== 'idle', 'cancelling the dialog released');
  await page.click('#release');
  await until(page, 'the confirmation dialog again', () => document.querySelector('#confirm').open);
  await page.click('#confirm-ok');
  await until(page, 'the request released', () => ['deallocation', 'idle'].includes(document.querySelector('[data-testid="request-state"]')?.textContent));

  // --- keyboard: the skip link, then the views' links, reached with Tab
  await page.focus('body');
  let reached = null;
  for (let presses = 0; presses < 8 && reached !== 'Providers'; presses++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.textContent?.trim());
  }
  expect(reached === 'Providers', `Tab did not reach the Providers link (last: ${reached})`);
  await page.keyboard.press('Enter');
  await until(page, 'the providers view by keyboard', () => document.querySelector('main[data-ready="providers"]') &&
    document.querySelectorAll('[data-testid="provider-row"]').length === 3);
  const unlabelled = await page.$$eval('input, select', (fields) => fields.filter((f) => !f.labels || f.labels.length === 0).map((f) => f.id));
  expect(unlabelled.length === 0, `fields without a label: ${unlabelled}`);

  // --- sortable, filterable by label
  await page.click('button[data-sort="provider_id"]');
  const firstDescending = await page.$eval('[data-testid="provider-row"]', (row) => row.dataset.provider);
  expect(firstDescending === 'node_3', `sorted descending, first ${firstDescending}`);
  await page.getByLabel('Labels (key=value, comma separated)').fill('zone=node_2');
  const filtered = await page.$$eval('[data-testid="provider-row"]', (rows) => rows.map((r) => r.dataset.provider));
  expect(filtered.length === 1 && filtered[0] === 'node_2', `filtered ${filtered}`);
  await page.getByLabel('Labels (key=value, comma separated)').fill('');

  // --- an operator cordons node_3 after confirming (cancelling first changes nothing), then drains it
  await page.click('button[data-action="cordon"][data-provider="node_3"]');
  await until(page, 'the cordon confirmation', () => document.querySelector('#confirm').open);
  await page.click('#confirm-cancel');
  expect(await page.$('[data-provider="node_3"] [data-testid="provider-scheduling"]') === null, 'cancelling the dialog cordoned');
  await page.click('button[data-action="cordon"][data-provider="node_3"]');
  await until(page, 'the cordon confirmation again', () => document.querySelector('#confirm').open);
  await page.click('#confirm-ok');
  await until(page, 'node_3 cordoned', () => document.querySelector('[data-provider="node_3"] [data-testid="provider-scheduling"]')?.textContent === 'cordoned');
  await page.click('button[data-action="drain"][data-provider="node_3"]');
  await until(page, 'the drain confirmation', () => document.querySelector('#confirm').open);
  await page.click('#confirm-ok');
  await until(page, 'node_3 draining, saying what cannot move', () =>
    document.querySelector('[data-provider="node_3"] [data-testid="provider-scheduling"]')?.textContent === 'draining' &&
    /cannot move now/.test(document.querySelector('#provider-action-result').textContent));
  const drainAnswer = await text(page, '#provider-action-result');
  await shoot(page, 'providers-drain');
  await page.click('button[data-action="uncordon"][data-provider="node_3"]');
  await until(page, 'the uncordon confirmation', () => document.querySelector('#confirm').open);
  await page.click('#confirm-ok');
  await until(page, 'node_3 open again', () => document.querySelector('[data-provider="node_3"]') &&
    document.querySelector('[data-provider="node_3"] [data-testid="provider-scheduling"]') === null);
  result({ drain_answer: drainAnswer });

  // --- a killed agent's provider turns failed on the page
  await step('kill_agent', { provider: 'node_3' });
  await until(page, 'node_3 failed', () => document.querySelector('[data-provider="node_3"] [data-testid="provider-status"]')?.textContent === 'failed');
  await shoot(page, 'providers');

  // --- a quota set by an operator: on the overview against use, and as a live event
  await open(page, `${leaderUrl}/ui/#/overview`, 'overview');
  const quota = await step('set_quota', { namespace: 'default', kind: 'cpu_cores', limit: 8 });
  await until(page, "default's cpu_cores quota against its use", (held) =>
    document.querySelector('[data-testid="quota-row"][data-namespace="default"] [data-testid="quota-bar"][data-kind="cpu_cores"]')
      ?.textContent.trim() === `cpu_cores ${held} / 8`, quota.held);
  await shoot(page, 'overview-quotas');

  await open(page, `${leaderUrl}/ui/#/events`, 'events');
  await until(page, 'events listed', () => document.querySelectorAll('[data-testid="event-row"]').length > 5);
  await until(page, 'the quota_set and provider_scheduling events listed', () =>
    document.querySelector('[data-testid="event-row"][data-type="quota_set"]') &&
    document.querySelector('[data-testid="event-row"][data-type="provider_scheduling"]'));
  await shoot(page, 'events');

  // --- a page on a follower: stale reads, said so; the leader killed, it goes on
  const follower = Object.keys(config.urls).find((id) => Number(id) !== config.leader);
  // The leader's page goes with its replica: close it first.
  await page.close();
  const followerPage = await context.newPage();
  watchErrors(followerPage, errors);
  await open(followerPage, `${config.urls[follower]}/ui/#/overview`, 'overview');
  await until(followerPage, 'the stale banner', () => !document.querySelector('[data-testid="stale"]').hidden);
  await shoot(followerPage, 'follower');
  await open(followerPage, `${config.urls[follower]}/ui/#/allocations`, 'allocations');
  const killed = await step('kill_leader');
  await until(followerPage, 'a new leader on the page', (old) => {
    const replica = document.querySelector('[data-testid="replica"]').textContent;
    return window.qm.cluster && window.qm.cluster.leader_id != null && window.qm.cluster.leader_id !== old && replica;
  }, killed.leader);
  const afterFailover = await step('allocate', { provider: 'node_1' });
  await until(followerPage, 'an allocation made after the failover', (id) => document.querySelector(`tr[data-request="${id}"]`) !== null, afterFailover.request_id);
  await until(followerPage, 'the event stream live', () => document.querySelector('[data-testid="live"]').classList.contains('on'));
  const newLeader = await followerPage.evaluate(() => window.qm.cluster.leader_id);
  result({ failover: { killed: killed.leader, new_leader: newLeader, page_on: Number(follower) } });

  // --- a thousand providers: the page load, measured (not asserted)
  const many = await step('register_many', { count: 1000 });
  const survivor = config.urls[newLeader] || config.urls[follower];
  // From a fresh page to the view drawn with every provider: twice, the
  // first while the leader is still declaring the silent ones failed.
  const loads = [];
  for (let round = 0; round < 2; round++) {
    for (const view of ['providers', 'overview']) {
      const loadPage = await context.newPage();
      const started = Date.now();
      await loadPage.goto(`${survivor}/ui/#/${view}`);
      await until(loadPage, `the ${view} view with ${many.providers} providers`, ([v, n]) => document.querySelector(`main[data-ready="${v}"]`) &&
        (v === 'providers' ? document.querySelectorAll('[data-testid="provider-row"]').length : Number(document.querySelector('[data-testid="count-providers"]')?.textContent)) >= n,
        [view, many.providers]);
      loads.push({ view, round, ms: Date.now() - started, view_ms: await loadPage.evaluate((v) => window.qm.timings[v], view) });
      await loadPage.close();
    }
  }
  result({ page_load: { providers: many.providers, loads } });

  expect(errors.length === 0, `errors in the page: ${errors.join(' | ')}`);
  await context.close();
}

async function tlsScenario(browser) {
  const url = config.urls[config.leader];
  const asHolder = async (name) => {
    const context = await browser.newContext({
      viewport: { width: 1280, height: 720 },
      ignoreHTTPSErrors: true,
      clientCertificates: [{ origin: url, certPath: config.certs[name].cert, keyPath: config.certs[name].key }],
    });
    const page = await context.newPage();
    const errors = [];
    watchErrors(page, errors);
    return { context, page, errors };
  };

  // --- a consumer of team-a sees its namespace only
  const teamA = await asHolder('team-a');
  await open(teamA.page, `${url}/ui/#/allocations`, 'allocations');
  const seen = await teamA.page.$$eval('[data-testid="allocation-row"]', (rows) => rows.map((r) => r.dataset.request));
  const whoami = await text(teamA.page, '[data-testid="whoami"]');
  expect(whoami.includes('team-a'), `whoami: ${whoami}`);
  await shoot(teamA.page, 'tls-consumer');
  await open(teamA.page, `${url}/ui/#/request/${config.requests['team-b']}`, 'request');
  const otherNamespace = await teamA.page.$('[data-testid="not-found"]');
  result({ consumer_sees: seen, consumer_sees_other_request: otherNamespace === null });
  await teamA.context.close();

  // --- an admin sees both and releases team-b's after confirming
  const admin = await asHolder('admin');
  await open(admin.page, `${url}/ui/#/allocations`, 'allocations');
  const adminSees = await admin.page.$$eval('[data-testid="allocation-row"]', (rows) => rows.map((r) => r.dataset.request));
  await open(admin.page, `${url}/ui/#/request/${config.requests['team-b']}`, 'request');
  await until(admin.page, 'the release button', () => document.querySelector('#release') !== null);
  await admin.page.click('#release');
  await until(admin.page, 'the dialog', () => document.querySelector('#confirm').open);
  await admin.page.click('#confirm-ok');
  await until(admin.page, 'released by the admin', () => ['deallocation', 'idle'].includes(document.querySelector('[data-testid="request-state"]')?.textContent));
  result({ admin_sees: adminSees, admin_released: config.requests['team-b'] });
  expect(teamA.errors.length === 0 && admin.errors.length === 0, `errors in the page: ${[...teamA.errors, ...admin.errors].join(' | ')}`);
  await admin.context.close();
}

(async () => {
  const browser = await chromium.launch({ executablePath: config.chromium });
  try {
    if (config.scenario === 'tls') await tlsScenario(browser);
    else await clusterScenario(browser);
  } finally {
    await browser.close();
  }
})().then(
  () => process.exit(0),
  (error) => {
    console.error(`browser.js: ${error.stack || error}`);
    process.exit(1);
  },
);
