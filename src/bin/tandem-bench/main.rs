//! `tandem-bench`: a load generator for any y-websocket server, plus the bare-relay
//! ceiling and the raw SQLite ceiling. See BENCHMARKS.md for how the comparison is run.
//!
//! ```text
//! tandem-bench run --label tandem --url 'ws://127.0.0.1:8080/ws/{room}' --pid 1234 --workloads fanout,typing
//! tandem-bench relay --listen 127.0.0.1:9000
//! tandem-bench report results/*.json
//! ```

mod http;
mod load;
mod proc;
mod relay;
mod special;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use load::{Kind, Outcome, Spec, Target};

#[derive(Parser)]
#[command(name = "tandem-bench", about = "Load generator for y-websocket servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run workloads against a server.
    Run {
        /// Server name for the tables.
        #[arg(long)]
        label: String,
        /// WebSocket URL; `{room}` is replaced by the document name. Several (comma-
        /// separated): the nodes of a cluster, each room's clients spread over them.
        #[arg(long, value_delimiter = ',')]
        url: Vec<String>,
        /// Server process id, for CPU time and RSS from /proc; several (comma-separated) for
        /// a cluster (CPU is summed, RSS is the first's).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// y-sweet: create each document at this HTTP base first.
        #[arg(long)]
        ysweet: Option<String>,
        /// Comma-separated: fanout,fanout-5k,fanout-max,fanout-wide,typing,rooms,presence,idle,storm,durable,populate,cold,list,bigdoc
        #[arg(long, default_value = "fanout,fanout-wide,typing,rooms,presence")]
        workloads: String,
        /// Multiplies client and room counts (1.0 = the sizes in BENCHMARKS.md).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Sending window per workload, seconds.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Append results (JSON lines) to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Label for the cold-load figure (e.g. "cold-load, log only").
        #[arg(long, default_value = "cold-load")]
        cold_label: String,
        /// The wire format: `yws` (y-websocket: one document per connection, named in the
        /// URL) or `hocuspocus` (the document's name before every message, an auth message
        /// first).
        #[arg(long, value_enum, default_value_t = load::Framing::Yws)]
        framing: load::Framing,
    },
    /// The ceiling: a bare WebSocket relay without CRDT or storage.
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Raw SQLite insert rate with Tandem's settings.
    Sqlite {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print markdown tables (with ratios to the reference server) from JSON-lines results.
    Report { files: Vec<PathBuf> },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Relay { listen } => relay::serve(&listen).await,
        Command::Sqlite { dir, secs, json } => {
            let results = special::sqlite_ceiling(&dir, secs).await?;
            emit(&results, json.as_ref())
        }
        Command::Report { files } => report(&files),
        Command::Run {
            label,
            url,
            pid,
            ysweet,
            workloads,
            scale,
            secs,
            json,
            cold_label,
            framing,
        } => {
            load::set_framing(framing);
            let target = Target { label, urls: url, ysweet, pid: pid.first().copied(), pids: pid };
            let n = |x: usize| ((x as f64 * scale).round() as usize).max(2);
            let duration = Duration::from_secs_f64(secs);
            for workload in workloads.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                let spec = |name: &str, rooms, clients, writers, rate, kind| Spec {
                    name: name.into(),
                    rooms,
                    clients_per_room: clients,
                    writers_per_room: writers,
                    rate,
                    duration,
                    kind,
                    update_bytes: 32,
                };
                let result = match workload {
                    "fanout" => {
                        load::run(&target, &spec("fanout", 1, n(100) + 1, 1, 1000.0, Kind::Doc))
                            .await
                    }
                    "fanout-max" => {
                        load::run(
                            &target,
                            &spec("fanout-max", 1, n(100) + 1, 1, 20_000.0, Kind::Doc),
                        )
                        .await
                    }
                    "fanout-5k" => {
                        load::run(&target, &spec("fanout-5k", 1, n(100) + 1, 1, 5_000.0, Kind::Doc))
                            .await
                    }
                    "fanout-wide" => {
                        load::run(&target, &spec("fanout-wide", 1, n(1500) + 1, 1, 20.0, Kind::Doc))
                            .await
                    }
                    "typing" => {
                        let c = n(100);
                        load::run(&target, &spec("typing", 1, c, c, 10.0, Kind::Doc)).await
                    }
                    "rooms" => {
                        load::run(&target, &spec("rooms", n(1000), 2, 2, 1.0, Kind::Doc)).await
                    }
                    "presence" => {
                        let c = n(500);
                        load::run(&target, &spec("presence", 1, c, c, 0.5, Kind::Awareness)).await
                    }
                    "idle" => special::idle(&target, n(1000), 10).await,
                    "bigdoc" => {
                        let mb = ((32.0 * scale).ceil() as usize).max(1);
                        let rooms = spec("bigdoc", 10, 2, 2, 10.0, Kind::Doc);
                        special::big_document(&target, mb, rooms).await
                    }
                    "storm" => {
                        special::join_storm(
                            &target,
                            ((20.0 * scale).ceil() as usize).max(1),
                            n(150),
                        )
                        .await
                    }
                    "durable" => special::durable(&target, secs.min(5.0)).await,
                    "populate" => special::populate_log(&target, n(100_000)).await,
                    "cold" => special::cold_load(&target, &cold_label).await,
                    "list" => special::list_vs_load(&target, n(100_000)).await,
                    other => anyhow::bail!("unknown workload {other}"),
                };
                match result {
                    Ok(mut outcome) => {
                        if !outcome.workload.starts_with("cold-load") {
                            outcome.workload = title(workload, scale);
                        }
                        emit(&[outcome], json.as_ref())?
                    }
                    Err(e) => {
                        eprintln!("{workload} against {}: {e:#}", target.label);
                        let failed = Outcome {
                            workload: title(workload, scale),
                            server: target.label.clone(),
                            errors: 1,
                            note: format!("failed: {e:#}"),
                            ..Default::default()
                        };
                        emit(&[failed], json.as_ref())?;
                    }
                }
                // Let the server settle (close handshakes, room unloads) between workloads.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(())
        }
    }
}

/// The heading a workload's table gets (sizes at the given scale).
fn title(workload: &str, scale: f64) -> String {
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(2);
    match workload {
        "fanout" => format!("1. fan-out: 1 writer at 1,000 updates/s, {} observers", n(100)),
        "fanout-max" => {
            format!("1c. saturation: 1 writer offering 20,000 updates/s, {} observers", n(100))
        }
        "fanout-5k" => format!("1a. fan-out: 1 writer at 5,000 updates/s, {} observers", n(100)),
        "fanout-wide" => {
            format!("1b. wide fan-out: 1 writer at 20 updates/s, {} observers", n(1500))
        }
        "typing" => format!("2. everyone types: 1 room x {} clients x 10 updates/s", n(100)),
        "rooms" => format!("3. many rooms: {} rooms x 2 clients x 1 update/s", n(1000)),
        "presence" => {
            format!(
                "4. presence: {} clients in one room, 1 awareness update every 2 s each",
                n(500)
            )
        }
        "idle" => format!("5. memory: {} rooms x 10 idle connections", n(1000)),
        "storm" => format!("6. join storm: {} clients join a large document at once", n(150)),
        "durable" => "7b. durable throughput: one room, one writer, 256 in flight".into(),
        "populate" => "7a. populate: writing the log for the cold load".into(),
        "bigdoc" => format!(
            "9. rooms beside a large document: 10 rooms x 2 clients x 10 updates/s, one {} MiB document appended to",
            ((32.0 * scale).ceil() as usize).max(1)
        ),
        "list" => {
            format!("8. listing beside room loads: {} documents, 50 listing clients", n(100_000))
        }
        other => other.into(),
    }
}

fn emit(results: &[Outcome], json: Option<&PathBuf>) -> anyhow::Result<()> {
    print_table(results);
    if let Some(path) = json {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for r in results {
            writeln!(file, "{}", serde_json::to_string(r)?)?;
        }
    }
    Ok(())
}

const HEADER: &str = "| server | clients | deliveries/s | p50 ms | p99 ms | max ms | cross-node p50 / p99 ms | CPU ms per 1k deliveries | peak RSS MiB | lost | errors |";
const RULE: &str = "|---|---|---|---|---|---|---|---|---|---|---|";

fn row(r: &Outcome) -> String {
    let cross = if r.nodes > 1 {
        format!("{:.2} / {:.2}", r.cross_p50_ms, r.cross_p99_ms)
    } else {
        "-".into()
    };
    format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {cross} | {:.1} | {:.1} | {} | {} |",
        r.server,
        r.clients,
        r.deliveries_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.cpu_ms_per_1k,
        r.peak_rss_mb,
        r.lost,
        r.errors
    )
}

fn print_table(results: &[Outcome]) {
    for r in results {
        println!("\n### {}\n\n{HEADER}\n{RULE}\n{}", r.workload, row(r));
        if !r.note.is_empty() {
            println!("\n{}", r.note);
        }
    }
}

/// One table per workload with every server, and ratios against the reference server.
fn report(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut all: Vec<Outcome> = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(file)?.lines().filter(|l| !l.trim().is_empty()) {
            all.push(serde_json::from_str(line)?);
        }
    }
    let mut workloads: Vec<String> = Vec::new();
    for r in &all {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload.clone());
        }
    }
    for workload in workloads {
        let rows: Vec<&Outcome> = all.iter().filter(|r| r.workload == workload).collect();
        println!("\n### {workload}\n\n{HEADER}\n{RULE}");
        for r in &rows {
            println!("{}", row(r));
        }
        for r in &rows {
            if !r.note.is_empty() {
                println!("\n- {}: {}", r.server, r.note);
            }
        }
        let find = |name: &str| rows.iter().find(|r| r.server == name);
        let Some(t) = find("tandem") else { continue };
        for other in [
            "node",
            "node-leveldb",
            "hocuspocus",
            "hocuspocus-sqlite",
            "ysweet",
            "baseline",
            "relay",
        ] {
            let Some(o) = find(other) else { continue };
            if o.deliveries_per_sec <= 0.0 || o.cpu_ms_per_1k <= 0.0 {
                continue;
            }
            println!(
                "- tandem / {other}: {:.2}× deliveries/s, {:.2}× p99 latency, {:.2}× CPU per delivery",
                t.deliveries_per_sec / o.deliveries_per_sec,
                if o.p99_ms > 0.0 { t.p99_ms / o.p99_ms } else { 0.0 },
                t.cpu_ms_per_1k / o.cpu_ms_per_1k
            );
        }
    }
    Ok(())
}

/// HTTP POST (JSON) for y-sweet's document creation.
pub(crate) async fn http_post(url: &str, json: &str) -> anyhow::Result<String> {
    let headers = [("Content-Type", "application/json")];
    let response = http::request(url, "POST", "HTTP/1.1", &headers, json.as_bytes()).await?;
    if !(200..300).contains(&response.status) {
        anyhow::bail!("POST {url}: {}", response.headers.lines().next().unwrap_or(""));
    }
    Ok(response.text())
}
