// Starts the fanout release binary on 127.0.0.1:0 for a test file, waits for its
// `listening on` line, and stops it (SIGTERM, then SIGKILL) so no process is left behind.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.FANOUT_BIN ?? resolve(here, '../../../target/release/fanout');

export async function startServer(flags = [], { startupMs = 10_000 } = {}) {
  if (!existsSync(BIN)) throw new Error(`no fanout binary at ${BIN}: cargo build --release`);
  const args = ['serve', '--listen', '127.0.0.1:0', '--app', 'echo', '--drain-timeout', '3s', ...flags];
  const child = spawn(BIN, args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { FANOUT_LOG: 'info', ...process.env },
  });
  let log = '';
  const port = await new Promise((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`fanout did not listen in ${startupMs} ms:\n${log}`)), startupMs);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolvePort(Number(m[1]));
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`fanout exited (${code ?? sig}) before listening:\n${log}`));
    });
  });
  const exited = new Promise((res) => child.on('exit', (code, sig) => res({ code, sig })));
  return {
    port,
    url: `ws://127.0.0.1:${port}/`,
    log: () => log,
    /** SIGTERM, then SIGKILL after `ms`; resolves to the exit code (null if killed). */
    async stop(ms = 6000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      let timer;
      const killed = new Promise((res) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          res(null);
        }, ms);
      });
      const r = await Promise.race([exited.then((e) => e.code), killed]);
      clearTimeout(timer);
      await exited;
      if (/panicked/.test(log)) throw new Error(`fanout panicked:\n${log}`);
      return r;
    },
  };
}

/** Opens a client and resolves once it is open. */
export function open(url, options = {}) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, options.protocols ?? [], options);
    ws.once('open', () => res(ws));
    ws.once('error', rej);
  });
}

/** Resolves with the next message as { data, isBinary }. */
export function nextMessage(ws, ms = 10_000) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error('no message in time')), ms);
    ws.once('message', (data, isBinary) => {
      clearTimeout(timer);
      res({ data, isBinary });
    });
  });
}

/** Resolves with { code, reason } when the connection closes. */
export function closed(ws, ms = 10_000) {
  return new Promise((res, rej) => {
    if (ws.readyState === WebSocket.CLOSED) return rej(new Error('already closed'));
    const timer = setTimeout(() => rej(new Error('not closed in time')), ms);
    ws.once('close', (code, reason) => {
      clearTimeout(timer);
      res({ code, reason: reason.toString() });
    });
  });
}
