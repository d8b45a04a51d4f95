// The contribute page: makes this tab a volunteer host and keeps it working, as the native
// client's daemon does, through the same API:
// - the tab's host: registered on first start (under the signed-in account, or an anonymous
//   one), its token kept in this browser's localStorage, so a reload is the same host. Tabs
//   open at once each hold a host of their own (a Web Lock per host), since one host's list
//   of what it holds speaks for one tab;
// - the scheduler request: reports in, as many replicas out as there are idle workers, the
//   replicas the tab holds listed (so the server resends any whose reply was lost, or that
//   a reload forgot), aborts obeyed;
// - each replica: module and inputs downloaded by hash and checked with SubtleCrypto, run in
//   a Web Worker of its own (task-worker.js) which the page terminates at the wall-clock
//   limit, on an abort or on pause; the output uploaded, then reported.
// Closing the tab stops everything: unfinished replicas are not reported, and the server
// gives them to someone else after the tab's short deadline.

import { Instrumenter } from './instrument.js';
import { LIMIT, hostError, moduleError } from './runtime.js';
import { hex } from './sha256.js';

const API = '/api/v1';
/** Bytes of scratch files a task may keep (in the worker's memory). */
const SCRATCH_LIMIT = 128 * 1024 * 1024;
/** Bytes of downloaded modules and inputs kept for later tasks. */
const BLOB_CACHE_BYTES = 256 * 1024 * 1024;
/** Compiled modules kept for later tasks. */
const PREPARED_CACHE_ENTRIES = 16;
/** Retries after a failure wait this long at first, doubling to the maximum, with jitter. */
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 5 * 60 * 1000;
/** Finished tasks stay in the table this long. */
const FINISHED_SHOWN_MS = 60 * 1000;
/** The longest a browser timer can wait at once (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Where an anonymous volunteer's account is kept, for every tab of this browser. */
const ANONYMOUS_ACCOUNT = 'wasmgrid.anonymous-account';

const root = document.getElementById('contribute');
const view = {
  start: document.getElementById('start'),
  pause: document.getElementById('pause'),
  fewer: document.getElementById('fewer'),
  more: document.getElementById('more'),
  workers: document.getElementById('workers'),
  status: document.getElementById('status'),
  host: document.getElementById('host'),
  validated: document.getElementById('validated'),
  credit: document.getElementById('credit'),
  reported: document.getElementById('reported'),
  tasks: document.querySelector('#tasks tbody'),
};

const cores = Math.max(1, navigator.hardwareConcurrency || 1);
const state = {
  host: null,
  computing: false,
  paused: false,
  workers: Number(localStorage.getItem('wasmgrid.workers')) || Math.max(1, cores - 1),
  /** Replicas this tab holds, by id: running, waiting, or finished and not yet acknowledged. */
  tasks: new Map(),
  /** Finished tasks' rows, shown for a while. */
  finished: [],
  reported: 0,
  contactTimer: null,
  nextContactAt: 0,
  /** No scheduler request before this time (ms since the epoch): the server's word, or backoff. */
  notBefore: 0,
  contacting: false,
  contactAgain: false,
  /** The timer that refreshes the host's figures. */
  refreshing: null,
  failures: 0,
  problem: null,
};
state.workers = Math.min(Math.max(1, state.workers), cores);

let instrumenter = null;
let instrumenterModule = null;
const blobs = new Map();
let blobBytes = 0;
const preparedModules = new Map();

// --- the page ---------------------------------------------------------------------------------

view.start.addEventListener('click', () => start());
view.pause.addEventListener('click', () => (state.paused ? resume() : pause()));
view.fewer.addEventListener('click', () => setWorkers(state.workers - 1));
view.more.addEventListener('click', () => setWorkers(state.workers + 1));
render();
// A reload of a tab that was computing goes on computing, as the same host.
if (sessionStorage.getItem('wasmgrid.computing') === 'yes') start();

function setWorkers(count) {
  state.workers = Math.min(Math.max(1, count), cores);
  localStorage.setItem('wasmgrid.workers', String(state.workers));
  runWaiting();
  render();
  if (state.computing) contactSoon(0);
}

async function start() {
  if (state.computing) return;
  if (!window.isSecureContext || !crypto.subtle || !navigator.locks) {
    state.problem = 'This browser cannot compute here: the page needs a secure connection (HTTPS).';
    render();
    return;
  }
  state.computing = true;
  sessionStorage.setItem('wasmgrid.computing', 'yes');
  state.problem = null;
  render();
  try {
    instrumenterModule = await WebAssembly.compileStreaming(fetch('/static/contribute/instrument.wasm'));
    instrumenter = await Instrumenter.load(instrumenterModule);
    state.host = await acquireHost();
  } catch (error) {
    state.computing = false;
    sessionStorage.removeItem('wasmgrid.computing');
    state.problem = `Cannot start: ${error.message}`;
    render();
    return;
  }
  render();
  contactSoon(0);
  if (!state.refreshing) state.refreshing = setInterval(refreshTotals, 15000);
  refreshTotals();
}

function pause() {
  state.paused = true;
  for (const task of state.tasks.values()) {
    if (task.state === 'running' || task.state === 'downloading') {
      stopWorker(task);
      // A download still on its way belongs to a run that is over.
      task.run++;
      task.state = 'paused';
    }
  }
  render();
}

function resume() {
  state.paused = false;
  for (const task of state.tasks.values()) if (task.state === 'paused') task.state = 'waiting';
  runWaiting();
  render();
  contactSoon(0);
}

// --- the tab's host -----------------------------------------------------------------------------

/** The key this browser keeps its hosts under: the signed-in account's, or the anonymous ones'. */
function hostsKey() {
  return `wasmgrid.hosts.${root.dataset.account ?? 'anonymous'}`;
}

function readHosts() {
  return JSON.parse(localStorage.getItem(hostsKey()) ?? '[]');
}

/**
 * A host of this browser that no other tab holds now, or a new one. Tabs register one at a
 * time (so that tabs started together share one anonymous account), and a new host is locked
 * before it is written down, so that no other tab can take it in between.
 */
async function acquireHost() {
  for (const host of readHosts()) {
    if (await holdLock(host.hostId)) return host;
  }
  const host = await navigator.locks.request('wasmgrid-register', () => registerHost());
  await holdLock(host.hostId);
  localStorage.setItem(hostsKey(), JSON.stringify([...readHosts(), host]));
  return host;
}

/** Holds the lock of a host for as long as this tab lives, if no other tab holds it. */
function holdLock(hostId) {
  return new Promise((resolve) => {
    navigator.locks.request(`wasmgrid-host-${hostId}`, { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      return lock === null ? undefined : new Promise(() => {});
    });
  });
}

/**
 * Registers a host for this tab: under the signed-in account, or under this browser's
 * anonymous account (made with its first host). The page says which account it expects, so
 * that a session that ended since the page loaded is not silently replaced by another.
 */
async function registerHost() {
  const platform = await describePlatform();
  const signedIn = root.dataset.account;
  const anonymous = signedIn ? null : JSON.parse(localStorage.getItem(ANONYMOUS_ACCOUNT) ?? 'null');
  const headers = {
    'Content-Type': 'application/json',
    'X-CSRF-Token': root.dataset.csrf,
    'X-Wasmgrid-Account': signedIn ?? 'anonymous',
  };
  if (anonymous) headers.Authorization = `Bearer ${anonymous.accountKey}`;
  const response = await fetch('/contribute/hosts', {
    method: 'POST',
    headers,
    body: JSON.stringify({
      name: `${platform.browser} on ${platform.os}`,
      os: platform.os,
      arch: platform.arch,
      cores,
      memory_bytes: memoryBudget(),
      client_version: `wasmgrid-web (instrumentation ${instrumenter.version}; ${platform.browser})`,
    }),
  });
  if (response.status === 401 && anonymous) {
    // This browser's anonymous account is gone: make another.
    localStorage.removeItem(ANONYMOUS_ACCOUNT);
    return registerHost();
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  const registered = await response.json();
  if (registered.account_key) {
    localStorage.setItem(ANONYMOUS_ACCOUNT, JSON.stringify({ accountId: registered.account_id, accountKey: registered.account_key }));
  }
  return { hostId: registered.host_id, accountId: registered.account_id, token: registered.host_token };
}

/** The memory this tab may give its tasks together: what the browser says the machine has, at most 4 GiB. */
function memoryBudget() {
  return Math.min(navigator.deviceMemory || 4, 4) * 1024 ** 3;
}

/** The platform, architecture and browser, as the user agent names them. */
async function describePlatform() {
  const data = navigator.userAgentData;
  let arch = 'unknown';
  if (data?.getHighEntropyValues) {
    const values = await data.getHighEntropyValues(['architecture', 'bitness']).catch(() => ({}));
    const names = { 'x86/64': 'x86_64', 'x86/32': 'x86', 'arm/64': 'aarch64', 'arm/32': 'arm' };
    arch = names[`${values.architecture}/${values.bitness}`] ?? values.architecture ?? arch;
  }
  const brand = data?.brands?.find((entry) => !/Not.?A.?Brand/i.test(entry.brand) && entry.brand !== 'Chromium')
    ?? data?.brands?.find((entry) => entry.brand === 'Chromium');
  return {
    os: data?.platform || navigator.platform || 'unknown',
    arch,
    browser: brand ? `${brand.brand} ${brand.version}` : 'a browser',
  };
}

/** Forgets a host the server no longer knows, and registers another. */
async function replaceHost() {
  const known = readHosts().filter((host) => host.hostId !== state.host.hostId);
  localStorage.setItem(hostsKey(), JSON.stringify(known));
  for (const task of state.tasks.values()) stopWorker(task);
  state.tasks.clear();
  state.host = await acquireHost();
}

// --- the scheduler --------------------------------------------------------------------------

/** Contacts the server in `delayMs`, or as soon after as it allows (its `retry_after`, backoff). */
function contactSoon(delayMs) {
  const at = Math.max(Date.now() + delayMs, state.notBefore);
  if (state.contactTimer !== null && state.nextContactAt <= at) return;
  clearTimeout(state.contactTimer);
  state.nextContactAt = at;
  state.contactTimer = setTimeout(contact, Math.min(at - Date.now(), MAX_TIMER_MS));
}

/**
 * One scheduler request at a time: what finished, what the tab holds, and as much work as it
 * has room for.
 */
async function contact() {
  state.contactTimer = null;
  if (!state.host) return;
  if (state.contacting) {
    state.contactAgain = true;
    return;
  }
  state.contacting = true;
  try {
    await contactOnce();
  } finally {
    state.contacting = false;
    if (state.contactAgain) {
      state.contactAgain = false;
      contactSoon(0);
    }
  }
}

async function contactOnce() {
  const reported = [...state.tasks.values()].filter((task) => task.report && task.uploaded);
  const reports = reported.map((task) => task.report);
  const busy = [...state.tasks.values()].filter((task) => !task.report).length;
  const want = state.paused ? 0 : Math.max(0, state.workers - busy);
  const request = { reports, want_replicas: want, held_replicas: [...state.tasks.keys()] };
  let reply;
  try {
    const response = await fetch(`${API}/scheduler`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${state.host.token}` },
      body: stringify(request),
    });
    if (response.status === 401) {
      await replaceHost();
      contactSoon(0);
      return;
    }
    if (!response.ok) throw new Error(await errorMessage(response), { cause: retryAfter(response) });
    reply = parseBigNumbers(await response.text());
  } catch (error) {
    backOff(`Cannot reach the project: ${error.message}`, error.cause);
    return;
  }
  state.failures = 0;
  state.problem = null;
  state.notBefore = Date.now() + reply.retry_after_seconds * 1000;
  for (const id of reply.acknowledged) {
    const task = state.tasks.get(id);
    if (task?.report) {
      state.tasks.delete(id);
      state.reported++;
      showFinished(task);
    }
  }
  for (const id of reply.abort) {
    const task = state.tasks.get(id);
    if (task) {
      stopWorker(task);
      state.tasks.delete(id);
    }
  }
  for (const assignment of reply.assignments) {
    if (!state.tasks.has(assignment.replica_id)) addTask(assignment);
  }
  runWaiting();
  render();
  // Reports that finished while this request was out go at once; the rest wait their turn.
  const waiting = [...state.tasks.values()].some((task) => task.report && task.uploaded && !reported.includes(task));
  contactSoon(waiting ? 0 : Math.max(reply.retry_after_seconds, 1) * 1000);
}

function backOff(problem, retryAfterMs) {
  state.failures++;
  const wait = Math.max(retryAfterMs ?? 0, backoff(state.failures));
  state.problem = `${problem} (trying again in ${Math.round(wait / 1000)} s)`;
  state.notBefore = Date.now() + wait;
  render();
  contactSoon(wait);
}

/** How long to wait after `failures` failures in a row: doubling, capped, with jitter. */
function backoff(failures) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 20));
  return base / 2 + Math.random() * (base / 2);
}

// --- tasks ------------------------------------------------------------------------------------

function addTask(assignment) {
  state.tasks.set(assignment.replica_id, {
    assignment,
    state: 'waiting',
    worker: null,
    fuelUsed: 0n,
    fraction: null,
    startedAt: null,
    report: null,
    uploaded: false,
    /** Which start this is: a pause or a new start makes an earlier one's results stale. */
    run: 0,
    downloadFailures: 0,
  });
}

/**
 * Starts waiting tasks while there are idle workers, and while the memory the running ones
 * may take leaves room for the next one's limit (one task always runs).
 */
function runWaiting() {
  if (state.paused) return;
  for (const task of state.tasks.values()) {
    if (task.state !== 'waiting') continue;
    const running = [...state.tasks.values()].filter((t) => ['downloading', 'running'].includes(t.state));
    if (running.length >= state.workers) return;
    const memory = running.reduce((sum, t) => sum + t.assignment.limits.memory_bytes, task.assignment.limits.memory_bytes);
    if (running.length > 0 && memory > BigInt(memoryBudget())) return;
    runTask(task);
  }
}

async function runTask(task) {
  const { assignment } = task;
  const run = ++task.run;
  task.state = 'downloading';
  task.startedAt = null;
  render();
  let files;
  try {
    files = await download(assignment);
    task.downloadFailures = 0;
  } catch (error) {
    if (task.run !== run) return;
    if (error instanceof Unusable) return finish(task, { ...moduleError(error.message), fuelUsed: 0n, runTimeMs: 0 });
    task.state = 'waiting';
    task.downloadFailures++;
    state.problem = `Cannot download task ${assignment.work_unit_name}: ${error.message}`;
    render();
    setTimeout(runWaiting, backoff(task.downloadFailures));
    return;
  }
  // A pause, an abort or a newer start while the files were on their way: this run is over.
  if (task.run !== run || task.state !== 'downloading' || state.tasks.get(assignment.replica_id) !== task) return;
  const worker = new Worker('/static/contribute/task-worker.js', { type: 'module', name: assignment.work_unit_name });
  task.worker = worker;
  task.state = 'running';
  task.startedAt = performance.now();
  const prepared = preparedModules.get(assignment.module.sha256);
  const wallTimeMs = Number(assignment.limits.wall_time_seconds) * 1000;
  task.wallDeadline = task.startedAt + wallTimeMs;
  armWallTimer(task, wallTimeMs);
  worker.onmessage = ({ data }) => {
    if (task.worker !== worker) return;
    if (data.type === 'progress') {
      task.fuelUsed = data.fuelUsed;
      task.fraction = data.fraction;
      renderSoon();
    } else if (data.type === 'prepared') {
      remember(preparedModules, assignment.module.sha256, data.prepared, PREPARED_CACHE_ENTRIES);
    } else if (data.type === 'done') {
      stopWorker(task);
      finish(task, data.report);
    } else if (data.type === 'failed') {
      stopWorker(task);
      finish(task, { ...hostError(`the tab's worker failed: ${data.message}`), fuelUsed: task.fuelUsed, runTimeMs: 0 });
    }
  };
  worker.onerror = (event) => {
    event.preventDefault();
    if (task.worker !== worker) return;
    stopWorker(task);
    finish(task, { ...hostError(`the tab's worker failed: ${event.message}`), fuelUsed: task.fuelUsed, runTimeMs: 0 });
  };
  worker.postMessage({
    instrumenter: instrumenterModule,
    module: prepared ? { prepared } : { bytes: files.module },
    task: {
      args: assignment.args,
      stdin: files.stdin,
      inputs: files.inputs,
      limits: {
        fuel: assignment.limits.fuel,
        memory_bytes: assignment.limits.memory_bytes,
        output_bytes: assignment.limits.output_bytes,
      },
      seed: assignment.seed,
      scratchLimit: SCRATCH_LIMIT,
    },
  });
  render();
}

/** Ends the task's run at its wall-clock limit (in steps, since a timer waits 24 days at most). */
function armWallTimer(task, wallTimeMs) {
  clearTimeout(task.wallTimer);
  const left = Math.max(0, task.wallDeadline - performance.now());
  task.wallTimer = setTimeout(() => {
    if (performance.now() < task.wallDeadline) {
      armWallTimer(task, wallTimeMs);
      return;
    }
    stopWorker(task);
    finish(task, { ...moduleError(LIMIT.wallTime), fuelUsed: task.fuelUsed, runTimeMs: Math.round(wallTimeMs) });
  }, Math.min(left, MAX_TIMER_MS));
}

function stopWorker(task) {
  clearTimeout(task.wallTimer);
  task.worker?.terminate();
  task.worker = null;
}

/** A run ended: upload its output, then report it with the next scheduler request. */
async function finish(task, result) {
  const { assignment } = task;
  if (!state.tasks.has(assignment.replica_id) || task.report) return;
  task.state = result.outcome === 'success' ? 'uploading' : 'reporting';
  task.fuelUsed = result.fuelUsed ?? task.fuelUsed;
  const outcome = result.outcome === 'success'
    ? { status: 'success', output_hash: result.outputHash, output_bytes: result.archive.length }
    : { status: result.outcome, reason: result.reason };
  task.report = {
    replica_id: assignment.replica_id,
    outcome,
    fuel_used: task.fuelUsed,
    run_time_ms: result.runTimeMs ?? 0,
    exit_status: result.exitStatus ?? null,
    stderr: result.stderr ?? '',
    instrumentation_version: instrumenter.version,
  };
  task.result = result.outcome === 'success' ? 'success' : result.reason;
  render();
  runWaiting();
  if (result.outcome === 'success') await upload(task, result);
  task.uploaded = true;
  task.state = 'reporting';
  render();
  contactSoon(0);
}

/** Uploads a task's output, retrying while the failure may pass; a refusal becomes its report. */
async function upload(task, result) {
  const { replica_id: id } = task.assignment;
  for (let attempt = 0; ; attempt++) {
    // Aborted, or the host replaced, while this upload waited: nobody needs it now.
    if (state.tasks.get(id) !== task) return;
    let response;
    try {
      response = await fetch(`${API}/replicas/${id}/output/${result.outputHash}`, {
        method: 'PUT',
        headers: { Authorization: `Bearer ${state.host.token}`, 'Content-Type': 'application/octet-stream' },
        body: result.archive,
      });
      if (response.ok) return;
    } catch (error) {
      response = null;
      state.problem = `Cannot upload a result: ${error.message}`;
    }
    const transient = response === null || response.status >= 500 || response.status === 429;
    if (!transient) {
      // Reported as a failed run rather than dropped, as the native client does: the server
      // learns it, and does not send the replica again as one this tab lost.
      task.report.outcome = { status: 'error', reason: `the server refused the output: ${await errorMessage(response)}` };
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(retryAfter(response) ?? 0, backoff(attempt + 1))));
  }
}

class Unusable extends Error {}

/** A task's module, standard input and input files, each checked against its SHA-256. */
async function download(assignment) {
  for (const file of assignment.inputs) {
    const plain = file.name !== '' && file.name !== '.' && file.name !== '..'
      && new TextEncoder().encode(file.name).length <= 255 && !/[/\\\0]/.test(file.name);
    if (!plain) throw new Unusable(`the server sent an unusable input file name ${JSON.stringify(file.name)}`);
  }
  const prepared = preparedModules.has(assignment.module.sha256);
  const [module, stdin, ...inputs] = await Promise.all([
    prepared ? null : blob(assignment.module),
    assignment.stdin ? blob(assignment.stdin) : new Uint8Array(0),
    ...assignment.inputs.map((file) => blob(file.blob)),
  ]);
  return { module, stdin, inputs: assignment.inputs.map((file, i) => ({ name: file.name, data: inputs[i] })) };
}

async function blob(reference) {
  const cached = blobs.get(reference.sha256);
  if (cached) return cached;
  const response = await fetch(reference.url);
  if (!response.ok) throw new Error(await errorMessage(response));
  const bytes = new Uint8Array(await response.arrayBuffer());
  const digest = hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
  if (digest !== reference.sha256) throw new Error(`${reference.url} did not match its SHA-256`);
  blobs.set(reference.sha256, bytes);
  blobBytes += bytes.length;
  for (const [hash, kept] of blobs) {
    if (blobBytes <= BLOB_CACHE_BYTES) break;
    blobs.delete(hash);
    blobBytes -= kept.length;
  }
  return bytes;
}

function remember(map, key, value, entries) {
  map.delete(key);
  map.set(key, value);
  if (map.size > entries) map.delete(map.keys().next().value);
}

function showFinished(task) {
  state.finished.unshift({ name: task.assignment.work_unit_name, result: task.result, fuelUsed: task.fuelUsed, at: Date.now() });
  state.finished = state.finished.filter((row) => Date.now() - row.at < FINISHED_SHOWN_MS).slice(0, 20);
}

async function refreshTotals() {
  if (!state.host) return;
  try {
    const response = await fetch(`${API}/stats/hosts/${state.host.hostId}`);
    if (!response.ok) return;
    const host = await response.json();
    view.validated.textContent = String(host.valid_results);
    view.credit.textContent = host.total_credit.toFixed(2);
  } catch {
    // The next refresh tries again.
  }
}

// --- the view -----------------------------------------------------------------------------------

let renderPending = false;

function renderSoon() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
  });
}

function render() {
  view.workers.textContent = String(state.workers);
  view.fewer.disabled = state.workers <= 1;
  view.more.disabled = state.workers >= cores;
  view.start.hidden = state.computing;
  view.pause.hidden = !state.computing;
  view.pause.textContent = state.paused ? 'Resume' : 'Pause';
  view.reported.textContent = String(state.reported);
  if (state.host && view.host.dataset.host !== String(state.host.hostId)) {
    view.host.dataset.host = String(state.host.hostId);
    view.host.replaceChildren(link(`/hosts/${state.host.hostId}`, `host ${state.host.hostId}`));
  }
  const running = [...state.tasks.values()].filter((task) => task.state === 'running').length;
  view.status.textContent = state.problem
    ?? (!state.computing ? 'Not computing yet.'
      : state.paused ? 'Paused.'
        : running > 0 ? `Computing: ${running} of ${state.workers} workers busy.`
          : 'Waiting for work.');
  view.status.classList.toggle('error', state.problem !== null);

  const rows = [];
  const now = performance.now();
  for (const task of state.tasks.values()) {
    const seconds = task.startedAt === null ? null : (now - task.startedAt) / 1000;
    rows.push(row(task.assignment.work_unit_name, task.state, task.fraction, task.fuelUsed, seconds, task.assignment.replica_id));
  }
  for (const done of state.finished) rows.push(row(done.name, done.result === 'success' ? 'sent' : `sent: ${done.result}`, 1, done.fuelUsed, null, null));
  view.tasks.replaceChildren(...rows);
}

function row(name, taskState, fraction, fuelUsed, seconds, replicaId) {
  const tr = document.createElement('tr');
  if (replicaId !== null) tr.dataset.replica = String(replicaId);
  const cells = [
    name,
    taskState,
    fraction === null || fraction === undefined ? '' : `${(fraction * 100).toFixed(0)} %`,
    formatFuel(fuelUsed),
    seconds === null ? '' : `${seconds.toFixed(0)} s`,
  ];
  cells.forEach((text, i) => {
    const td = document.createElement('td');
    td.textContent = text;
    if (i >= 2) td.className = 'number';
    tr.append(td);
  });
  return tr;
}

function formatFuel(fuel) {
  const value = Number(fuel);
  if (value === 0) return '';
  const units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  const [scale, unit] = units.find(([size]) => value >= size) ?? [1, ''];
  return `${(value / scale).toFixed(scale === 1 ? 0 : 2)} ${unit}`.trim();
}

function link(href, text) {
  const a = document.createElement('a');
  a.href = href;
  a.textContent = text;
  return a;
}

// --- the wire -------------------------------------------------------------------------------

/**
 * JSON with BigInts written as plain numbers (fuel may not fit a double). They pass through
 * `JSON.stringify` as strings behind a marker made for this request, which no module can
 * have written into its standard error (it could write any fixed one).
 */
function stringify(value) {
  const marker = crypto.randomUUID();
  return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${marker}${v}` : v))
    .replace(new RegExp(`"${marker}(\\d+)"`, 'g'), '$1');
}

/** A scheduler reply, with the numbers a double cannot hold exactly (seeds, fuel, sizes) as BigInts. */
function parseBigNumbers(text) {
  const quoted = text.replace(/"(seed|fuel|memory_bytes|output_bytes)":(\d+)/g, '"$1":"$2"');
  return JSON.parse(quoted, (key, value) =>
    (['seed', 'fuel', 'memory_bytes', 'output_bytes'].includes(key) && typeof value === 'string' ? BigInt(value) : value));
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function retryAfter(response) {
  const seconds = Number(response?.headers.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined;
}
