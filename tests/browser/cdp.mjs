// Drives headless Chromium over the DevTools protocol for scripts/browser-test.sh: starts it,
// opens fanout's status page (waits for live samples, checks the numbers, saves a screenshot,
// times the first sample), then the test page (tests/browser/page.html), sending SIGTERM to a
// server when the page asks, and prints one line per check: "ok NAME detail" or "FAIL NAME
// detail". Exit status 1 on any failure. Needs Node's WebSocket (node --experimental-websocket
// on Node 20, built in from 22).
//
// usage: node cdp.mjs CHROMIUM STATUS_URL TEST_URL SCREENSHOT SIGTERM_PID [chromium flags...]

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";

const [chromium, statusUrl, testUrl, screenshot, sigtermPid, ...flags] = process.argv.slice(2);
let failures = 0;
function line(ok, name, detail) {
  if (!ok) failures++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? "  " + detail : ""}`);
}
const sleep = ms => new Promise(r => setTimeout(r, ms));

const t0 = Date.now();
const browser = spawn(chromium, [...flags, "--remote-debugging-port=0", "about:blank"], {
  stdio: ["ignore", "ignore", "pipe"],
});
const wsUrl = await new Promise((resolve, reject) => {
  let err = "";
  const t = setTimeout(() => reject(new Error("chromium did not start: " + err.slice(-2000))), 30000);
  browser.stderr.on("data", d => {
    err += d;
    const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
    if (m) { clearTimeout(t); resolve(m[1]); }
  });
  browser.on("exit", c => reject(new Error(`chromium exited (${c}): ${err.slice(-2000)}`)));
});

const cdp = new WebSocket(wsUrl);
await new Promise((res, rej) => { cdp.onopen = res; cdp.onerror = () => rej(new Error("CDP connect")); });
let nextId = 1;
const pending = new Map();
cdp.onmessage = e => {
  const m = JSON.parse(e.data);
  if (m.id && pending.has(m.id)) {
    const { resolve, reject } = pending.get(m.id);
    pending.delete(m.id);
    m.error ? reject(new Error(JSON.stringify(m.error))) : resolve(m.result);
  }
};
function send(method, params = {}, sessionId) {
  const id = nextId++;
  cdp.send(JSON.stringify({ id, method, params, sessionId }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const page = (method, params) => send(method, params, sessionId);
async function evaluate(expression) {
  const r = await page("Runtime.evaluate", { expression, returnByValue: true });
  return r.result.value;
}
/** Polls `expression` until it is truthy or `ms` pass; returns its last value. */
async function until(expression, ms, onTick) {
  const end = Date.now() + ms;
  let v;
  while (Date.now() < end) {
    v = await evaluate(expression);
    if (v) return v;
    if (onTick) await onTick();
    await sleep(100);
  }
  return v;
}

await page("Page.enable");
await page("Emulation.setDeviceMetricsOverride", { width: 1200, height: 900, deviceScaleFactor: 1, mobile: false });

// ----- the status page -----
await page("Page.navigate", { url: statusUrl });
const samples = await until("Number(document.body && document.body.dataset.samples || 0) >= 3 && document.body.dataset.samples", 20000);
const first = Number(await evaluate("document.body.dataset.firstSampleAt || 0"));
const values = await evaluate("[...document.querySelectorAll('.card')].map(c => c.querySelector('b').textContent + '=' + c.querySelector('.v').textContent)");
const openCard = (values || []).find(v => v.startsWith("open connections="));
line(Number(samples) >= 3 && /=\s*[0-9]/.test(openCard || ""), "status_page_live",
  `${samples} samples; ${openCard}; first sample ${first ? first - t0 : "?"} ms after chromium start`);
const shot = await page("Page.captureScreenshot", { format: "png" });
writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
console.log(`     screenshot ${screenshot}; cards: ${(values || []).join("; ")}`);
if (first) console.log(`     figure: chromium start -> first live sample: ${first - t0} ms`);

// ----- the test page -----
await page("Page.navigate", { url: testUrl });
let signalled = false;
await until("document.body && document.body.dataset.done === '1'", 90000, async () => {
  if (!signalled && (await evaluate("document.body && document.body.dataset.sigterm")) === "ready") {
    process.kill(Number(sigtermPid), "SIGTERM");
    signalled = true;
  }
});
const results = (await evaluate("document.getElementById('results').textContent")) || "";
const expected = ["text_utf8_echo", "binary_1mib_echo", "permessage_deflate", "wss_echo",
  "subscribe_urlsearchparams", "form_body_is_text", "refused_upgrade_counted",
  "close_1000_clean", "close_1001_on_sigterm"];
for (const name of expected) {
  const l = results.split("\n").find(l => l.split(" ")[1] === name);
  if (!l) { line(false, name, "did not run"); continue; }
  line(l.startsWith("PASS "), name, l.slice(5 + name.length + 1));
}

await send("Browser.close").catch(() => {});
cdp.close();
setTimeout(() => browser.kill("SIGKILL"), 3000).unref();
process.exitCode = failures ? 1 : 0;
