//! A broadcast frame exists once in memory per publish, not once per subscriber: the bytes
//! the whole process allocates while one 1 MiB publish is queued for 200 subscribers stay
//! near one copy of the frame (a per-subscriber copy would be 200 MiB).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use fanout::apps::push::{Push, PushConfig};
use fanout::server::{Config, Server};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn one_publish_allocates_one_frame_for_all_subscribers() {
    let server = Server::start(
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            write_queue_limit: 64 << 20,
            ..common::base_config()
        },
        Push::new(PushConfig {
            publish_key: Some("k".into()),
            ..PushConfig::default()
        }),
    )
    .unwrap();
    let addr = server.local_addr();
    // 200 raw subscribers that never read: every frame stays queued in the server.
    let mut subs = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /ws?topics=big HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 129];
        s.read_exact(&mut head).unwrap();
        assert!(head.starts_with(b"HTTP/1.1 101"));
        subs.push(s);
    }
    // The request is built before counting; its copy into the server's stash is counted.
    let payload = vec![b'z'; 1 << 20];
    let mut req = format!(
        "POST /publish/big HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    let mut publisher = TcpStream::connect(addr).unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = vec![0u8; 512];
    let before = ALLOCATED.load(Relaxed);
    publisher.write_all(&req).unwrap();
    let n = publisher.read(&mut response).unwrap();
    let after = ALLOCATED.load(Relaxed);
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.contains("\"subscribers\":200"), "{text}");
    let allocated = after - before;
    println!("allocated {allocated} bytes for one 1 MiB publish to 200 subscribers");
    // The request body is read into a growing buffer (about 2 MiB with doubling), and the
    // frame is encoded once (1 MiB); 200 copies would be 200 MiB.
    assert!(allocated < 8 << 20, "allocated {allocated} bytes");
    drop(subs);
}
