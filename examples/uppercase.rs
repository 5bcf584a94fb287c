//! A custom handler on the fanout reactor: answers every text message in upper case, refuses
//! clients without `?name=`, and says goodbye when a client sends "bye".
//!
//! Run: `cargo run --release --example uppercase` then connect to ws://127.0.0.1:9002/?name=ann

use fanout::proto::handshake::{HttpError, Request};
use fanout::proto::Message;
use fanout::server::{Accept, Config, ConnInfo, Ctx, Handler, Server};

#[derive(Clone, Default)]
struct Uppercase;

/// Per-connection state lives in the connection's slab entry: keep it small.
struct Client {
    messages: u32,
}

impl Handler for Uppercase {
    type State = Client;
    type Msg = ();

    fn on_open<'r>(
        &mut self,
        req: &Request<'r>,
        _conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, Client>, HttpError> {
        match req.query_param("name") {
            Some(n) if !n.is_empty() => Ok(Accept::new(Client { messages: 0 })),
            _ => Err(HttpError::new(403, "say who you are: ?name=...")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Client>, msg: Message<'_>) {
        ctx.state().messages += 1;
        match msg {
            Message::Text("bye") => ctx.close(1000, "goodbye"),
            Message::Text(t) => ctx.send_text(&t.to_uppercase()),
            Message::Binary(b) => ctx.send_binary(b),
        }
    }

    fn on_close(&mut self, id: fanout::server::ConnId, st: &mut Client, code: u16, _: &str) {
        println!("{id} closed with {code} after {} messages", st.messages);
    }
}

fn main() -> std::io::Result<()> {
    let config = Config {
        listen: "127.0.0.1:9002".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::start(config, Uppercase)?;
    println!("listening on ws://{}/?name=you", server.local_addr());
    server.join();
    Ok(())
}
