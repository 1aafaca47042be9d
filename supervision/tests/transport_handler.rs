//! `ActorHandler`: requests served by a ractor actor, with the handler's own deadline.

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_supervision::transport::mem::MemNetwork;
use smart_supervision::transport::{ActorHandler, Client, Endpoint, RequestError, Server};
use transport_common::*;

enum CounterMsg {
    Remote {
        epoch: u64,
        req: Req,
        reply: RpcReplyPort<Result<Resp, String>>,
    },
    Note(String),
    Read(RpcReplyPort<Vec<String>>),
}

struct CounterActor;

impl Actor for CounterActor {
    type Msg = CounterMsg;
    type State = Vec<String>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        seen: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CounterMsg::Remote { epoch, req, reply } => match req {
                Req::Echo(s) => {
                    seen.push(s.clone());
                    let _ = reply.send(Ok(Resp::Text(format!("{s} at epoch {epoch}"))));
                }
                // Never answers: the handler's deadline must answer for it.
                Req::Sleep(_) => std::mem::forget(reply),
                _ => {
                    let _ = reply.send(Err("unsupported".into()));
                }
            },
            CounterMsg::Note(n) => seen.push(n),
            CounterMsg::Read(reply) => {
                let _ = reply.send(seen.clone());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn actor_handler_forwards_requests_and_notifications() {
    let (actor, _join) = Actor::spawn(None, CounterActor, ()).await.unwrap();
    let handler = ActorHandler::<Test, _>::new(
        actor.clone(),
        Duration::from_millis(200),
        |ctx, req, reply| CounterMsg::Remote {
            epoch: ctx.epoch,
            req,
            reply,
        },
    )
    .with_notifications(|_ctx, note| CounterMsg::Note(note));
    let net = MemNetwork::new(5);
    let s = Server::bind(
        &net.transport("srv"),
        "srv",
        server_endpoint(),
        Arc::new(handler),
    )
    .await
    .unwrap();
    let ep = Endpoint::client(key());
    ep.epoch.store(4, std::sync::atomic::Ordering::Relaxed);
    let c = Client::<Test>::connect(&net.transport("c"), s.local_addr(), ep)
        .await
        .unwrap();
    assert_eq!(
        c.request(Req::Echo("a".into()), T).await,
        Ok(Resp::Text("a at epoch 4".into()))
    );
    assert_eq!(
        c.request(Req::Fail, T).await,
        Err(RequestError::Fault("unsupported".into()))
    );
    // The actor never answers: the handler's 200 ms deadline turns it into a fault, well
    // before the client's own 2 s timeout.
    match c.request(Req::Sleep(0), T).await {
        Err(RequestError::Fault(m)) => assert!(m.contains("no answer within"), "{m}"),
        other => panic!("expected a fault, got {other:?}"),
    }
    c.notify("note".into()).unwrap();
    let start = std::time::Instant::now();
    loop {
        let seen = ractor::call_t!(actor, CounterMsg::Read, 500).unwrap();
        if seen == vec!["a".to_string(), "note".to_string()] {
            break;
        }
        assert!(start.elapsed() < T, "actor saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    actor.stop(None);
    // With the actor gone, requests fault instead of hanging.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(
        c.request(Req::Echo("b".into()), T).await,
        Err(RequestError::Fault(_))
    ));
}
