/* uws-pubsub: uWebSockets' pub/sub as a peer for `fanout serve --app push`, so the same client
 * (`fanout-load fanout`) drives both. It speaks the part of the push app's protocol that the
 * load generator uses:
 *   - subscribe in the URL: ws://127.0.0.1:PORT/ws?topics=a,b (each topic subscribed on open);
 *   - publish: POST /publish/<topic> with the payload as body; with --publish-key K, only with
 *     `Authorization: Bearer K` (else 401). A text frame for text/ and JSON content types, else
 *     binary. Answers {"topic":"<topic>","subscribers":N}.
 * One thread, no TLS, no compression, no idle timeout and no automatic pings (as fanout runs
 * with --ping-interval 0), a 16 MiB backpressure limit that never closes a subscriber.
 * Built from uWebSockets' examples (BroadcastingEchoServer, EchoBody) by build.sh beside it.
 *
 * usage: uws-pubsub [--port P] [--publish-key K]    (listens on 127.0.0.1, default port 9001) */

#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace {

struct PerSocketData {
    /* The decoded topics= value until open subscribes to its topics, then empty. */
    std::string topics;
};

bool is_text(std::string_view ct) {
    return ct.substr(0, 5) == "text/" || ct.substr(0, 16) == "application/json" ||
           ct.find("+json") != std::string_view::npos ||
           ct.substr(0, 33) == "application/x-www-form-urlencoded";
}

} // namespace

int main(int argc, char **argv) {
    int port = 9001;
    std::string key;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) {
            port = atoi(argv[i + 1]);
        } else if (!strcmp(argv[i], "--publish-key")) {
            key = argv[i + 1];
        } else {
            fprintf(stderr, "usage: uws-pubsub [--port P] [--publish-key K]\n");
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: uws-pubsub [--port P] [--publish-key K]\n");
        return 2;
    }
    const std::string bearer = "Bearer " + key;

    uWS::App app;
    app.ws<PerSocketData>("/ws", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 1024 * 1024,
        .idleTimeout = 0,
        .maxBackpressure = 16 * 1024 * 1024,
        .closeOnBackpressureLimit = false,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = false,
        .upgrade = [](auto *res, auto *req, auto *context) {
            res->template upgrade<PerSocketData>({std::string(req->getQuery("topics"))},
                req->getHeader("sec-websocket-key"), req->getHeader("sec-websocket-protocol"),
                req->getHeader("sec-websocket-extensions"), context);
        },
        .open = [](auto *ws) {
            PerSocketData *d = ws->getUserData();
            std::string_view all(d->topics);
            while (!all.empty()) {
                size_t comma = all.find(',');
                std::string_view t = all.substr(0, comma);
                if (!t.empty()) {
                    ws->subscribe(t);
                }
                all = comma == std::string_view::npos ? std::string_view() : all.substr(comma + 1);
            }
            std::string().swap(d->topics);
        },
        .message = [](auto *, std::string_view, uWS::OpCode) {},
    });

    app.post("/publish/:topic", [&app, &key, &bearer](auto *res, auto *req) {
        if (!key.empty() && req->getHeader("authorization") != bearer) {
            res->writeStatus("401 Unauthorized")->end("{\"error\":\"bad publish key\"}");
            return;
        }
        auto topic = std::make_shared<std::string>(req->getParameter(0));
        bool text = is_text(req->getHeader("content-type"));
        auto body = std::make_shared<std::string>();
        auto aborted = std::make_shared<bool>(false);
        res->onAborted([aborted]() { *aborted = true; });
        res->onData([res, &app, topic, text, body, aborted](std::string_view chunk, bool last) {
            body->append(chunk);
            if (!last || *aborted) {
                return;
            }
            app.publish(*topic, *body, text ? uWS::OpCode::TEXT : uWS::OpCode::BINARY);
            std::string answer = "{\"topic\":\"" + *topic + "\",\"subscribers\":" +
                                 std::to_string(app.numSubscribers(*topic)) + "}";
            res->writeHeader("Content-Type", "application/json")->end(answer);
        });
    });

    app.listen("127.0.0.1", port, [port](auto *listen_socket) {
        if (listen_socket) {
            fprintf(stderr, "uws-pubsub listening on 127.0.0.1:%d\n", port);
        } else {
            fprintf(stderr, "uws-pubsub: cannot listen on 127.0.0.1:%d\n", port);
            exit(1);
        }
    });
    app.run();
    return 0;
}
