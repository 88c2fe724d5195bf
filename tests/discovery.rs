#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backends discovered in DNS (issue 15): a `discover = "dns://..."` entry in front of a DNS
//! server the test controls and simulators on 127.0.0.2-4 (one port: a record has none). A
//! worker added to DNS is used within an interval, a removed one finishes its job, takes no new
//! one and leaves, failed lookups (SERVFAIL, the server gone) keep the workers, a name without
//! records drains them all, and a job waiting with no worker asks for one and runs on the next.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use common::pool::{finished, job, submit_ok};
use common::{Auth, Gateway, client, poll};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::Value;
use tokio::net::UdpSocket;

const DEADLINE: Duration = Duration::from_secs(20);
/// `[discovery] interval` of the gateway under test.
const INTERVAL: Duration = Duration::from_millis(200);
const NAME: &str = "workers.test.";

/// What the test's DNS server answers for [`NAME`].
#[derive(Clone, Default)]
struct Zone {
    addresses: Vec<IpAddr>,
    servfail: bool,
}

/// A tiny authoritative DNS server on 127.0.0.1 (UDP) answering A and AAAA queries for
/// [`NAME`] from a zone the test changes; NXDOMAIN for any other name.
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Dns {
    async fn start(addresses: &[IpAddr]) -> Dns {
        let zone = Arc::new(Mutex::new(Zone { addresses: addresses.to_vec(), servfail: false }));
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut dns = Dns { addr, zone, task: None };
        dns.serve(socket);
        dns
    }

    fn serve(&mut self, socket: UdpSocket) {
        let zone = self.zone.clone();
        self.task = Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let answer = answer(&query, &zone.lock().unwrap().clone());
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
            }
        }));
    }

    fn set(&self, addresses: &[IpAddr]) {
        *self.zone.lock().unwrap() = Zone { addresses: addresses.to_vec(), servfail: false };
    }

    fn servfail(&self) {
        self.zone.lock().unwrap().servfail = true;
    }

    /// Stops answering: its port is closed.
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Answers again on the same port.
    async fn restart(&mut self) {
        self.stop();
        let socket =
            poll(DEADLINE, "the DNS port free again", || async { UdpSocket::bind(self.addr).await.ok() }).await;
        self.serve(socket);
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired());
    for q in query.queries() {
        reply.add_query(q.clone());
    }
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    if zone.servfail {
        reply.set_response_code(ResponseCode::ServFail);
        return reply;
    }
    if !q.name().to_ascii().eq_ignore_ascii_case(NAME) {
        reply.set_response_code(ResponseCode::NXDomain);
        return reply;
    }
    for ip in &zone.addresses {
        let data = match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(q.name().clone(), 0, data));
    }
    reply
}

/// Simulators on 127.0.0.2, .3 and .4, all on one port; jobs take `job_ms` unless they say.
async fn workers(job_ms: u64) -> (u16, Vec<Simulator>) {
    let config = || SimConfig { job_duration: Duration::from_millis(job_ms), ..SimConfig::default() };
    for _ in 0..20 {
        let first = Simulator::start_on(SocketAddr::from(([127, 0, 0, 2], 0)), config()).await.unwrap();
        let port = first.addr().port();
        let mut sims = vec![first];
        for host in [3, 4] {
            match Simulator::start_on(SocketAddr::from(([127, 0, 0, host], port)), config()).await {
                Ok(sim) => sims.push(sim),
                Err(_) => break,
            }
        }
        if sims.len() == 3 {
            return (port, sims);
        }
    }
    panic!("no port free on 127.0.0.2, .3 and .4");
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A gateway whose only `[[backends]]` entry discovers `workers.test` at `port` through `dns`.
async fn gateway(dns: &Dns, port: u16) -> Gateway {
    Gateway::start_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\ndata_dir = {{data_dir}}\n\n[scheduler]\n\
         health_interval = \"100ms\"\nhealth_timeout = \"1s\"\nunhealthy_after = 2\n\n[discovery]\n\
         interval = \"{}ms\"\nnameservers = [\"{}\"]\n\n[[backends]]\nname = \"workers\"\n\
         discover = \"dns://workers.test:{port}\"\nmax_inflight = 1\n",
        INTERVAL.as_millis(),
        dns.addr
    ))
    .await
}

/// The backends `GET /comfygate/api/backends` lists.
async fn backends(gw: &Gateway, token: &str) -> Vec<Value> {
    let (status, body) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(token)).await;
    assert_eq!(status, 200, "{body}");
    body["backends"].as_array().cloned().unwrap_or_default()
}

/// Waits until the listed backends are exactly `names`, each healthy and ready for jobs.
async fn serving(gw: &Gateway, token: &str, names: &[&str]) {
    poll(DEADLINE, &format!("backends {names:?} in service"), || async {
        let list = backends(gw, token).await;
        let listed: Vec<&str> = list.iter().filter_map(|b| b["name"].as_str()).collect();
        let ready = list.iter().all(|b| {
            b["healthy"] == true && b["monitored"] == true && b["node_classes"].as_u64().is_some_and(|n| n > 0)
        });
        (listed == names && ready).then_some(())
    })
    .await;
}

fn ran(sim: &Simulator, id: &str) -> bool {
    sim.runs().iter().any(|r| r.prompt_id == id)
}

/// `comfygate_discovery_lookup_failures_total{entry="workers"}`.
async fn lookup_failures(gw: &Gateway, token: &str) -> f64 {
    let text = client().get(gw.at("/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    let series = "comfygate_discovery_lookup_failures_total{entry=\"workers\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)?.split(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn workers_added_to_dns_are_used_and_removed_ones_finish_their_job_then_leave() {
    let (port, sims) = workers(50).await;
    let mut dns = Dns::start(&[ip(2)]).await;
    let gw = gateway(&dns, port).await;
    let admin = gw.token("admin", "discovery").await;

    // One record: one backend, named after the entry and the address, and jobs run there.
    serving(&gw, &admin, &["workers-127-0-0-2"]).await;
    let list = backends(&gw, &admin).await;
    assert_eq!(list[0]["url"], format!("http://127.0.0.2:{port}"));
    assert_eq!(list[0]["max_inflight"], 1, "the entry's settings");
    let first = submit_ok(&gw, &admin, job("one", 1, 50)).await;
    finished(&gw, &admin, &first).await;
    assert!(ran(&sims[0], &first));

    // A second record: listed within an interval or so, and it takes jobs.
    dns.set(&[ip(2), ip(3)]);
    let added = Instant::now();
    poll(DEADLINE, "the new worker listed", || async {
        let list = backends(&gw, &admin).await;
        list.iter().any(|b| b["name"] == "workers-127-0-0-3").then_some(())
    })
    .await;
    assert!(added.elapsed() < INTERVAL * 10, "listed {:?} after the record was added", added.elapsed());
    serving(&gw, &admin, &["workers-127-0-0-2", "workers-127-0-0-3"]).await;
    // The CLI resolves the entry too: doctor checks the workers, not a URL; the list shows them.
    let doctor = gw.cli(&["doctor"], None).await.stdout;
    let target = format!("dns://workers.test:{port}");
    assert!(doctor.contains(&format!("discovered by DNS ({target}): 2 worker(s)")), "{doctor}");
    assert!(doctor.contains("backend workers-127-0-0-3") && doctor.contains("node classes"), "{doctor}");
    let list = gw.cli(&["backend", "list"], None).await.ok().stdout;
    assert!(list.contains(&format!("{target}: 2 worker(s) now")), "{list}");
    let row = list.lines().find(|l| l.starts_with("workers-127-0-0-3 ")).unwrap_or_default();
    assert!(row.contains(&format!("http://127.0.0.3:{port}")), "{list}");
    // One slot each: two long jobs run on both at once.
    let long_a = submit_ok(&gw, &admin, job("long-a", 2, 3000)).await;
    let long_b = submit_ok(&gw, &admin, job("long-b", 3, 3000)).await;
    poll(DEADLINE, "a long job running on each worker", || async {
        let running = |sim: &Simulator| {
            sim.runs().iter().any(|r| r.ended.is_none() && (r.prompt_id == long_a || r.prompt_id == long_b))
        };
        (running(&sims[0]) && running(&sims[1])).then_some(())
    })
    .await;

    // .2 leaves DNS while it runs a job: it finishes it, takes no new one, then is gone.
    let on_two = if ran(&sims[0], &long_a) { long_a.clone() } else { long_b.clone() };
    let runs_on_two = sims[0].runs().len();
    dns.set(&[ip(3)]);
    poll(DEADLINE, "the vanished worker draining", || async {
        let list = backends(&gw, &admin).await;
        list.iter().any(|b| b["name"] == "workers-127-0-0-2" && b["retiring"] == true).then_some(())
    })
    .await;
    let after = submit_ok(&gw, &admin, job("after", 4, 50)).await;
    let entry = finished(&gw, &admin, &on_two).await;
    assert_eq!(entry["status"]["status_str"], "success", "its running job finished: {entry}");
    finished(&gw, &admin, &after).await;
    assert!(ran(&sims[1], &after), "the new job went to the worker still in DNS");
    assert_eq!(sims[0].runs().len(), runs_on_two, "the drained worker took no new job");
    serving(&gw, &admin, &["workers-127-0-0-3"]).await;

    // SERVFAIL, then no server at all: lookups fail, the workers stay and keep working.
    dns.servfail();
    let before = lookup_failures(&gw, &admin).await;
    poll(DEADLINE, "lookups answered SERVFAIL", || async {
        (lookup_failures(&gw, &admin).await >= before + 2.0).then_some(())
    })
    .await;
    dns.stop();
    let before = lookup_failures(&gw, &admin).await;
    poll(DEADLINE, "lookups without a server", || async {
        (lookup_failures(&gw, &admin).await >= before + 1.0).then_some(())
    })
    .await;
    serving(&gw, &admin, &["workers-127-0-0-3"]).await;
    let meanwhile = submit_ok(&gw, &admin, job("meanwhile", 5, 50)).await;
    finished(&gw, &admin, &meanwhile).await;
    assert!(ran(&sims[1], &meanwhile));

    // The server back with .3 and .4: .4 joins.
    dns.set(&[ip(3), ip(4)]);
    dns.restart().await;
    serving(&gw, &admin, &["workers-127-0-0-3", "workers-127-0-0-4"]).await;

    // No records left: every worker drains and leaves; jobs wait for the next one.
    dns.set(&[]);
    serving(&gw, &admin, &[]).await;
    let (status, body) = gw.get_json("/comfygate/api/backends", &Auth::Bearer(&admin)).await;
    assert_eq!((status, body["jobs"].as_u64()), (200, Some(0)), "{body}");

    // From zero: a job waits, the gateway asks for a backend, one appears and runs it.
    let waiting = submit_ok(&gw, &admin, job("from-zero", 6, 50)).await;
    poll(DEADLINE, "one backend desired", || async {
        let text = client().get(gw.at("/metrics")).bearer_auth(&admin).send().await.ok()?.text().await.ok()?;
        text.lines().any(|l| l == "comfygate_desired_backends 1").then_some(())
    })
    .await;
    dns.set(&[ip(4)]);
    finished(&gw, &admin, &waiting).await;
    assert!(ran(&sims[2], &waiting));
}
