//! Leaving nothing behind on the shared broker, also when a test fails.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

use super::env::amqp_url;

/// Deletes every queue and exchange whose name starts with `prefix`, as
/// `rabbitmqctl` lists them. Blocking: for `Drop`.
pub(crate) fn delete_everything_named(prefix: &str) {
    let list = |what: &str| -> Vec<String> {
        super::rabbitmqctl::rows_best_effort(what, &["name"])
            .into_iter()
            .filter_map(|row| row.into_iter().next())
            .filter(|name| name.starts_with(prefix))
            .collect()
    };
    let (queues, exchanges) = (list("list_queues"), list("list_exchanges"));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let Ok(connection) =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            for queue in queues {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in exchanges {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = connection
            .close(200, "cleaned up after a failed test".into())
            .await;
    });
}
