//! Attempts counted per key over a window, in the database so that every server process
//! shares the counts: failed log-ins, sign-ups, and accounts and hosts created over the API.
//!
//! An attempt is recorded under each of its keys before it is counted, so attempts sent at
//! once count each other: the k-th to pass its count saw the k-1 before it, so no more than
//! a key's limit pass.

use std::net::IpAddr;

use sqlx::PgConnection;

/// How long an attempt counts against its keys.
pub const WINDOW: &str = "15 minutes";

/// An attempt recorded under each of its keys, within every key's limit.
pub struct Attempt {
    ids: Vec<i64>,
}

impl Attempt {
    /// Forgets an attempt, for limits that count only failures (a successful log-in).
    pub async fn forget(self, connection: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("delete from login_attempt where id = any($1)").bind(&self.ids).execute(connection).await?;
        Ok(())
    }
}

/// Records an attempt under each `(key, limit)`, unless that makes any key's attempts within
/// [`WINDOW`] more than its limit: then the attempt is refused (`None`) and leaves no trace.
/// Refused attempts do nothing, so they count against nothing; otherwise one address, stopped
/// by its own limit, could go on filling another key's (a name's, say).
///
/// The connection must not be inside a transaction: each attempt has to be visible to the
/// others at once.
pub async fn record_attempt(connection: &mut PgConnection, limits: &[(String, i64)]) -> sqlx::Result<Option<Attempt>> {
    let keys: Vec<&str> = limits.iter().map(|(key, _)| key.as_str()).collect();
    let ids: Vec<i64> = sqlx::query_scalar("insert into login_attempt (key) select unnest($1::text[]) returning id")
        .bind(&keys)
        .fetch_all(&mut *connection)
        .await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
        "select key, count(*) from login_attempt
         where key = any($1) and attempted_at > now() - interval '{WINDOW}' group by key"
    ))
    .bind(&keys)
    .fetch_all(&mut *connection)
    .await?;
    let over_limit =
        counts.iter().any(|(key, count)| limits.iter().any(|(limited, limit)| limited == key && count > limit));
    // The table holds only the current window.
    sqlx::query(&format!("delete from login_attempt where attempted_at < now() - interval '{WINDOW}'"))
        .execute(&mut *connection)
        .await?;
    let attempt = Attempt { ids };
    if over_limit {
        attempt.forget(connection).await?;
        return Ok(None);
    }
    Ok(Some(attempt))
}

/// The address an attempt is counted under: an IPv4 address, or an IPv6 address's /64,
/// which one subscriber usually holds whole (counting single IPv6 addresses would let them
/// try from endless ones).
pub fn address_bucket(address: IpAddr) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(network))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_network() {
        let bucket = |text: &str| address_bucket(text.parse().unwrap());
        assert_eq!(bucket("203.0.113.7"), "203.0.113.7");
        assert_eq!(bucket("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(bucket("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
        assert_eq!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:2:ffff::9"));
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
    }
}
