//! Agent86 shell tests: the actor over the real process runtime.

use super::*;
use ractor::call_t;
use smart_membership::epoch::MemoryEpochStore;
use smart_proto::agent::AgentEvent;

async fn spawn(store: MemoryEpochStore, dir: &Path) -> ActorRef<Agent86Msg> {
    let core = AgentCore::new(
        NodeId(9),
        Agent86Settings {
            ready_timeout: Duration::from_millis(100),
            ..Agent86Settings::new(dir, "127.0.0.1".parse().unwrap())
        },
        store.highest(),
    )
    .unwrap();
    let (a, _) = Actor::spawn(
        None,
        Agent86 {
            node: NodeId(9),
            epochs: Arc::new(store),
            core,
            panic_on_message: None,
        },
        (),
    )
    .await
    .unwrap();
    a
}

async fn send(a: &ActorRef<Agent86Msg>, from: u64, epoch: Epoch, cmd: AgentCommand) -> AgentReply {
    call_t!(
        a,
        |reply| Agent86Msg::Command {
            from: NodeId(from),
            epoch,
            cmd,
            reply
        },
        5000
    )
    .unwrap()
}

async fn cmd(a: &ActorRef<Agent86Msg>, from: u64, epoch: Epoch) -> AgentReply {
    send(a, from, epoch, AgentCommand::Report).await
}

#[tokio::test]
async fn stale_epochs_are_refused_and_new_ones_persisted_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryEpochStore::new(3);
    let a = spawn(store.clone(), dir.path()).await;
    assert!(matches!(cmd(&a, 1, 3).await, AgentReply::Report(_)));
    assert_eq!(
        cmd(&a, 1, 2).await,
        AgentReply::Refused {
            epoch: 2,
            highest: 3
        }
    );
    // A newer Control appears: the agent raises its epoch ...
    assert!(matches!(cmd(&a, 2, 5).await, AgentReply::Report(_)));
    assert_eq!(store.highest(), 5);
    // ... and the old one is now fenced off.
    assert!(matches!(
        cmd(&a, 1, 3).await,
        AgentReply::Refused { highest: 5, .. }
    ));
    let r = call_t!(a, Agent86Msg::Report, 1000).unwrap();
    assert_eq!(r.refused_stale, 2);
    assert_eq!(r.recent_commands, vec![(3, NodeId(1)), (5, NodeId(2))]);
}

#[tokio::test]
async fn epoch_raised_elsewhere_fences_the_agent() {
    // The node's membership saw a newer Control's heartbeat and raised the shared store:
    // the agent consults it when it executes, so an older Control is refused even though
    // the agent itself never received a command at the newer epoch.
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryEpochStore::new(1);
    let a = spawn(store.clone(), dir.path()).await;
    let (tx, rx) = ractor::concurrency::oneshot();
    store.raise(4).unwrap();
    a.send_message(Agent86Msg::Command {
        from: NodeId(1),
        epoch: 1,
        cmd: AgentCommand::Report,
        reply: tx.into(),
    })
    .unwrap();
    assert_eq!(
        rx.await.unwrap(),
        AgentReply::Refused {
            epoch: 1,
            highest: 4
        }
    );
}

fn sleeper(args: &[&str]) -> LaunchSpec {
    LaunchSpec {
        service: "sleeper".into(),
        command: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn start_report_stop_and_a_stale_start_is_refused_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryEpochStore::new(2);
    let a = spawn(store.clone(), dir.path()).await;
    let marker = dir.path().join("listen.txt");
    let script = format!("echo {{listen}} > {}; exec sleep 30", marker.display());
    let start = |name: &str| AgentCommand::Start {
        instance: name.into(),
        launch: sleeper(&["sh", "-c", &script]),
        reservation: Default::default(),
    };
    let AgentReply::Instance(info) = send(&a, 1, 2, start("svc")).await else {
        panic!("start failed")
    };
    let endpoint = info
        .endpoint
        .clone()
        .expect("a {listen} address was picked");
    assert!(endpoint.starts_with("http://127.0.0.1:"));
    // The process really runs, with the address substituted.
    for _ in 0..100 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(format!("http://{}/", got.trim()), endpoint);
    assert!(dir.path().join("svc.pid").exists());
    // Report lists it with its launch template (what a new Control needs).
    let AgentReply::Report(r) = cmd(&a, 1, 2).await else {
        panic!()
    };
    assert_eq!(r.instances.len(), 1);
    assert_eq!(r.instances[0].launch.command[2], script);
    // A deposed Control cannot start anything.
    store.raise(3).unwrap();
    assert_eq!(
        send(&a, 1, 2, start("other")).await,
        AgentReply::Refused {
            epoch: 2,
            highest: 3
        }
    );
    assert_eq!(
        send(
            &a,
            2,
            3,
            AgentCommand::Stop {
                instance: "svc".into()
            }
        )
        .await,
        AgentReply::Done
    );
    let AgentReply::Report(r) = cmd(&a, 2, 3).await else {
        panic!()
    };
    assert!(r.instances.is_empty());
    assert!(!dir.path().join("svc.pid").exists());
}

#[tokio::test]
async fn a_crashed_instance_is_restarted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryEpochStore::new(1);
    let core = AgentCore::new(
        NodeId(9),
        Agent86Settings {
            interval: Duration::from_millis(50),
            ..Agent86Settings::new(dir.path(), "127.0.0.1".parse().unwrap())
        },
        1,
    )
    .unwrap();
    let (a, _) = Actor::spawn(
        None,
        Agent86 {
            node: NodeId(9),
            epochs: Arc::new(store),
            core,
            panic_on_message: None,
        },
        (),
    )
    .await
    .unwrap();
    let r = send(
        &a,
        1,
        1,
        AgentCommand::Start {
            instance: "c".into(),
            launch: sleeper(&["sleep", "30"]),
            reservation: Default::default(),
        },
    )
    .await;
    assert!(matches!(r, AgentReply::Instance(_)), "{r:?}");
    let pgid: i32 = std::fs::read_to_string(dir.path().join("c.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let mut seen = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let r = call_t!(a, Agent86Msg::Report, 1000).unwrap();
        if let Some((_, ev)) = r.notices.first() {
            seen = Some((ev.clone(), r.instances.len()));
            break;
        }
    }
    let (ev, n) = seen.expect("a notice for the crash");
    assert!(
        matches!(ev, AgentEvent::InstanceRestarted { attempt: 1, .. }),
        "{ev:?}"
    );
    assert_eq!(n, 1, "still managed after its restart");
    let new: i32 = std::fs::read_to_string(dir.path().join("c.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, pgid);
    unsafe { libc::kill(-new, libc::SIGKILL) };
}

#[test]
fn cgroup_prefixes_are_per_node_and_data_dir_and_stable() {
    let a = super::cgroup_prefix(NodeId(1), std::path::Path::new("/var/lib/smart/instances"));
    assert_eq!(
        a,
        super::cgroup_prefix(NodeId(1), std::path::Path::new("/var/lib/smart/instances"))
    );
    assert!(a.starts_with("smart-n1-"), "{a}");
    assert_ne!(
        a,
        super::cgroup_prefix(NodeId(1), std::path::Path::new("/tmp/other/n1/instances"))
    );
    assert_ne!(
        a,
        super::cgroup_prefix(NodeId(2), std::path::Path::new("/var/lib/smart/instances"))
    );
}
