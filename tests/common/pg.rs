//! A fresh PostgreSQL database per test, for the scale-out tests. They need a server:
//! `TANDEM_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth) is
//! where one is looked for. Without one the tests skip, saying why, unless
//! `TANDEM_REQUIRE_PG=1` (set by `.ci/run`), which makes a missing server a failure.

use sqlx::Connection as _;

pub struct PgDb {
    /// The URL of this test's own database.
    pub url: String,
    admin: String,
    name: String,
}

fn admin_url() -> String {
    std::env::var("TANDEM_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates an empty database, or returns None (after printing why) when no server answers.
pub async fn fresh(test: &str) -> Option<PgDb> {
    let admin = admin_url();
    let connect = sqlx::PgConnection::connect(&admin);
    let mut conn = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => conn,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            if std::env::var("TANDEM_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: PostgreSQL is required (TANDEM_REQUIRE_PG=1) but {admin} fails: {why}"
                );
            }
            eprintln!(
                "skipping {test}: no PostgreSQL at {admin} ({why}); set TANDEM_TEST_PG to run it"
            );
            return None;
        }
    };
    let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("createdb");
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_string();
    Some(PgDb { url: format!("{base}/{name}"), admin, name })
}

impl PgDb {
    /// A connection to this test's database (to look at what is committed).
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot await; a thread with its own runtime can.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("drop database if exists {name} with (force)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy in front of the PostgreSQL server, which a test can cut (every connection
/// through it reset, new ones refused at once) and restore: a database outage for one node
/// without touching the server the other tests use.
pub struct Blip {
    /// `url` with the proxy's port: what the node under test is given.
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Blip {
    pub async fn new(db: &PgDb) -> Blip {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let rest = db.url.strip_prefix("postgres://").expect("a postgres:// url");
        let (userinfo, hostpath) = rest.split_once('@').expect("user@host");
        let (hostport, path) = hostpath.split_once('/').expect("host/db");
        let upstream = hostport.to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let epoch = Arc::new(epoch);
        let task = tokio::spawn({
            let (cut, epoch) = (cut.clone(), epoch.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the node sees its connection reset
                    }
                    let upstream = upstream.clone();
                    let mut cancelled = epoch.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cancelled.changed() => {}
                        }
                    });
                }
            }
        });
        Blip { url: format!("postgres://{userinfo}@127.0.0.1:{port}/{path}"), cut, epoch, task }
    }

    /// The database becomes unreachable through the proxy.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Blip {
    fn drop(&mut self) {
        self.task.abort();
    }
}
