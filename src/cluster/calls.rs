//! Redis connections and the bound on every call.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::COMMAND_TIMEOUT;

pub(super) fn manager(
    client: &redis::Client,
    response: Duration,
) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response));
    Ok(ConnectionManager::new_lazy_with_config(
        client.clone(),
        config,
    )?)
}

/// Runs one Redis call with a bound on its time ([`timed`], with the timeout as an error).
pub(super) async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    timed(call).await.map_err(|e| match e {
        Some(e) => e.into(),
        None => anyhow::anyhow!("no answer within {COMMAND_TIMEOUT:?}"),
    })
}

/// A Redis call bounded by [`COMMAND_TIMEOUT`]; `Err(None)` when it timed out.
pub(super) async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Option<redis::RedisError>> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}
