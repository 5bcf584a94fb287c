//! The echo app: every text or binary message goes back as it came. What Autobahn and the
//! load generator's `echo` scenario talk to.

use crate::proto::handshake::{HttpError, Request};
use crate::proto::Message;
use crate::server::{Accept, ConnInfo, Ctx, Handler};

#[derive(Clone, Default)]
pub struct Echo;

impl Handler for Echo {
    type State = ();
    type Msg = ();

    fn on_open<'r>(
        &mut self,
        req: &Request<'r>,
        _conn: &ConnInfo<'_>,
    ) -> Result<Accept<'r, ()>, HttpError> {
        // Speak the client's first subprotocol, if it offered any: an echo can speak them all.
        Ok(Accept {
            state: (),
            protocol: req.offered_protocols().next(),
        })
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, msg: Message<'_>) {
        match msg {
            Message::Text(t) => ctx.send_text(t),
            Message::Binary(b) => ctx.send_binary(b),
        }
    }
}
