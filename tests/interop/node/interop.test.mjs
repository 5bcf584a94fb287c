// Interop of fanout's echo app with the Node `ws` client (node --test).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { closed, nextMessage, open, startServer } from './server.mjs';

const TEN_MIB = 10 << 20;

describe('fanout with ws', () => {
  let server;
  before(async () => {
    // The 10 MiB echo is past the server's 1 MiB default --max-message-size.
    server = await startServer(['--max-message-size', '16MiB']);
  });
  after(async () => {
    const code = await server.stop();
    assert.equal(code, 0, `fanout did not shut down cleanly:\n${server.log()}`);
  });

  test('echoes text and binary', async () => {
    const ws = await open(server.url);
    ws.send('hello from ws ✓');
    let m = await nextMessage(ws);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.toString(), 'hello from ws ✓');
    const blob = randomBytes(4096);
    ws.send(blob);
    m = await nextMessage(ws);
    assert.equal(m.isBinary, true);
    assert.deepEqual(m.data, blob);
    ws.send('');
    m = await nextMessage(ws);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.length, 0);
    ws.close();
    await closed(ws);
  });

  test('echoes 10 MiB text and binary', async () => {
    const ws = await open(server.url);
    const text = 'fanout-'.repeat(Math.ceil(TEN_MIB / 7)).slice(0, TEN_MIB);
    ws.send(text);
    let m = await nextMessage(ws, 30_000);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.length, TEN_MIB);
    assert.ok(m.data.toString() === text, '10 MiB text came back different');
    const blob = randomBytes(TEN_MIB);
    ws.send(blob);
    m = await nextMessage(ws, 30_000);
    assert.equal(m.isBinary, true);
    assert.ok(blob.equals(m.data), '10 MiB binary came back different');
    ws.close();
    await closed(ws);
  });

  test('echoes a fragmented message as one', async () => {
    const ws = await open(server.url);
    ws.send('frag', { fin: false });
    ws.send('mented ', { fin: false });
    ws.send(Buffer.from('☃'), { fin: false });
    ws.send('!', { fin: true });
    let m = await nextMessage(ws);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.toString(), 'fragmented ☃!');
    const parts = [randomBytes(10), randomBytes(70_000), randomBytes(1)];
    parts.forEach((p, i) => ws.send(p, { binary: true, fin: i === parts.length - 1 }));
    m = await nextMessage(ws);
    assert.equal(m.isBinary, true);
    assert.deepEqual(m.data, Buffer.concat(parts));
    ws.close();
    await closed(ws);
  });

  test('answers ping with a pong carrying the same payload', async () => {
    const ws = await open(server.url);
    for (const payload of [Buffer.from('node-ping'), Buffer.alloc(0), Buffer.alloc(125, 7)]) {
      const pong = new Promise((res) => ws.once('pong', res));
      ws.ping(payload);
      assert.deepEqual(await pong, payload);
    }
    ws.close();
    await closed(ws);
  });

  for (const [code, reason] of [[1000, ''], [4001, 'node says bye']]) {
    test(`echoes close code ${code}`, async () => {
      const ws = await open(server.url);
      const done = closed(ws);
      ws.close(code, reason);
      const got = await done;
      assert.equal(got.code, code);
    });
  }

  test('offers permessage-deflate, gets no extension, works uncompressed', async () => {
    const ws = new WebSocket(server.url); // ws offers permessage-deflate by default
    const upgrade = new Promise((res) => ws.once('upgrade', res));
    await new Promise((res, rej) => {
      ws.once('open', res);
      ws.once('error', rej);
    });
    const res = await upgrade;
    assert.equal(res.statusCode, 101);
    assert.equal(res.headers['sec-websocket-extensions'], undefined);
    assert.equal(ws.extensions, '');
    const big = 'compressible '.repeat(10_000);
    ws.send(big, { compress: true });
    const m = await nextMessage(ws);
    assert.equal(m.data.toString(), big);
    ws.close();
    await closed(ws);
  });

  test('negotiates the first offered subprotocol', async () => {
    const ws = await open(server.url, { protocols: ['chat', 'superchat'] });
    assert.equal(ws.protocol, 'chat');
    ws.close();
    await closed(ws);
  });

  test('1,000 concurrent clients each echo 10 messages', async () => {
    const N = 1000;
    const clients = await Promise.all(Array.from({ length: N }, () => open(server.url)));
    await Promise.all(
      clients.map(async (ws, i) => {
        for (let j = 0; j < 10; j++) {
          const binary = j % 2 === 1;
          const payload = `client ${i} message ${j}`;
          ws.send(binary ? Buffer.from(payload) : payload);
          const m = await nextMessage(ws, 30_000);
          assert.equal(m.isBinary, binary);
          assert.equal(m.data.toString(), payload);
        }
      }),
    );
    const codes = await Promise.all(
      clients.map((ws) => {
        const done = closed(ws);
        ws.close(1000);
        return done;
      }),
    );
    assert.ok(codes.every((c) => c.code === 1000));
  });
});

describe('fanout --deflate with ws (permessage-deflate)', () => {
  let server;
  before(async () => {
    server = await startServer(['--deflate']);
  });
  after(async () => {
    const code = await server.stop();
    assert.equal(code, 0, `fanout did not shut down cleanly:\n${server.log()}`);
  });

  test('negotiates the default ws offer and compresses both ways', async () => {
    const ws = new WebSocket(server.url, { maxPayload: TEN_MIB * 2 }); // offers client_max_window_bits
    const upgrade = new Promise((res) => ws.once('upgrade', res));
    await new Promise((res, rej) => {
      ws.once('open', res);
      ws.once('error', rej);
    });
    const res = await upgrade;
    assert.equal(
      res.headers['sec-websocket-extensions'],
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
    );
    assert.match(ws.extensions, /permessage-deflate/);
    const doc = JSON.stringify(
      Array.from({ length: 20_000 }, (_, i) => ({ id: i, name: `user-${i}`, active: i % 3 === 0 })),
    );
    const before = ws._socket.bytesRead;
    ws.send(doc, { compress: true });
    let m = await nextMessage(ws, 30_000);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.toString(), doc);
    // The echo came back compressed: far fewer bytes on the wire than the message.
    const wire = ws._socket.bytesRead - before;
    assert.ok(wire * 4 < doc.length, `${wire} bytes on the wire for ${doc.length}`);
    const blob = randomBytes(100_000);
    ws.send(blob, { compress: true });
    m = await nextMessage(ws);
    assert.equal(m.isBinary, true);
    assert.ok(blob.equals(m.data));
    ws.send('tiny', { compress: true });
    m = await nextMessage(ws);
    assert.equal(m.data.toString(), 'tiny');
    ws.close();
    await closed(ws);
  });

  test('honours serverNoContextTakeover and window bits offers', async () => {
    const ws = new WebSocket(server.url, {
      perMessageDeflate: {
        serverNoContextTakeover: true,
        clientNoContextTakeover: true,
        serverMaxWindowBits: 9,
        clientMaxWindowBits: 9,
        threshold: 0,
      },
    });
    const upgrade = new Promise((res) => ws.once('upgrade', res));
    await new Promise((res, rej) => {
      ws.once('open', res);
      ws.once('error', rej);
    });
    assert.equal(
      (await upgrade).headers['sec-websocket-extensions'],
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9',
    );
    for (let i = 0; i < 20; i++) {
      const text = `message ${i} `.repeat(500 + i * 37);
      ws.send(text);
      const m = await nextMessage(ws);
      assert.equal(m.data.toString(), text);
    }
    ws.close();
    await closed(ws);
  });

  test('fragmented compressed message', async () => {
    const ws = await open(server.url, { perMessageDeflate: { threshold: 0 } });
    ws.send('compressed '.repeat(300), { fin: false });
    ws.send('and fragmented '.repeat(300), { fin: false });
    ws.send('end', { fin: true });
    const m = await nextMessage(ws);
    assert.equal(m.data.toString(), 'compressed '.repeat(300) + 'and fragmented '.repeat(300) + 'end');
    ws.close();
    await closed(ws);
  });
});
