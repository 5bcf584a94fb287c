//! Publish/subscribe: topics and their subscribers (by connection id), and the fan-out of a
//! publish: encode once, scatter to the shards, deliver to local subscribers, gather counts,
//! answer. A publish goes through a broker: in-process (one node) or Redis pub/sub (several
//! processes or machines). Knows connection ids and shared frames, never sockets or the
//! server; apps reach it through `Hub`, and it reaches connections through `ShardPort`.

pub mod history;
mod hub;
pub mod redis;
mod registry;
pub mod resp;

pub use history::{HistoryConfig, HistoryPolicy, NotRecovered, Position};
pub use hub::{
    Ack, BrokerConfig, BrokerStatus, Done, Framer, Hub, HubMsg, HubStats, PublishError, Reach,
    Recovered, Remote, ShardPort, RTT_BUCKETS_US,
};
pub use registry::{Registry, SubscribeError, Subscriptions};

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Checks a topic name: 1 to 128 bytes of `A-Z a-z 0-9 _ - . : /`.
pub fn validate_topic(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty topic name");
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err("topic name longer than 128 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
    {
        return Err("topic names use only A-Z a-z 0-9 _ - . : /");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic(&"x".repeat(129)).is_err());
        assert!(validate_topic(&"x".repeat(128)).is_ok());
        assert!(validate_topic("chat/room-1:v2").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a b").is_err());
    }
}
