//! Arbitrary bytes as agent requests. The first byte picks an RPC, the rest is its
//! protobuf payload, handed to the generated ttrpc method handler exactly as the
//! server does after reading a frame: decode, call the service, encode the reply.
//! The service has an empty container table in a scratch directory, so no request
//! can reach a container; the oracle says which status each request must get:
//!
//! - a payload that does not decode: the handler returns an error (the ttrpc server
//!   then drops the connection) and sends nothing;
//! - an id that breaks the documented rule, or a size out of range:
//!   `INVALID_ARGUMENT`; otherwise `NOT_FOUND` (no such container);
//! - never `OK` for a container RPC, never a panic, never a hang.
//!
//! CreateContainer is not dispatched (a valid one would start a container): its
//! payload goes through `container::validate_create`, which the service calls
//! first; likewise ConfigureNetwork through `network::plan`. CreateSandbox (sethostname, mount) and GetOomEvent (blocks until an
//! OOM kill) are left out.
#![no_main]

use husk_agent::container::{self, ContainerError, Containers, Paths};
use husk_agent::oom::OomWatcher;
use husk_agent::reaper::Reaper;
use husk_agent::service::{AgentService, HealthService};
use husk_agent::validate::{ValidationError, MAX_IO_LEN, MAX_JSON_LEN};
use husk_agent_fuzz::{id_is_valid, is_inside, relative_components, Tree};
use husk_agent_protocol::{agent as pb, agent_ttrpc};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use ttrpc::{Code, ConnectionContext, MessageHeader, MethodHandler, TtrpcContext};

type Reply = (MessageHeader, Vec<u8>);

/// The agent under test: the generated method table over a real `AgentService`.
struct Agent {
    tree: Tree,
    paths: Paths,
    containers: Arc<Containers>,
    methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>>,
    replies_tx: mpsc::Sender<Reply>,
    replies_rx: Mutex<mpsc::Receiver<Reply>>,
}

impl Agent {
    fn new() -> Self {
        let tree = Tree::new().expect("build the scratch tree");
        husk_agent_fuzz::self_check(&tree);
        std::fs::create_dir_all(tree.base.join("c1/rootfs")).expect("mkdir rootfs");
        let paths = Paths {
            state: tree.root.join("state"),
            bundles: tree.root.join("bundles"),
            shared: tree.base.clone(),
            consoles: tree.root.join("console"),
            no_pivot: false,
        };
        // Reaper::default(): no SIGCHLD thread (nothing is ever spawned here).
        let containers = Arc::new(Containers::new(
            paths.clone(),
            Arc::new(Reaper::default()),
            OomWatcher::start().expect("OOM watcher"),
        ));
        let mut methods = agent_ttrpc::create_health(Arc::new(HealthService));
        methods.extend(agent_ttrpc::create_agent(Arc::new(AgentService::new(
            Arc::clone(&containers),
        ))));
        let (replies_tx, replies_rx) = mpsc::channel();
        Self {
            tree,
            paths,
            containers,
            methods,
            replies_tx,
            replies_rx: Mutex::new(replies_rx),
        }
    }

    /// Runs one request through the method handler. `Err` when the handler fails
    /// (undecodable payload), else the status code of the reply it sent.
    fn call(&self, path: &str, payload: &[u8]) -> Result<Code, ttrpc::Error> {
        let handler = self
            .methods
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not registered"));
        let (service, method) = path[1..].split_once('/').expect("/service/method");
        let mut req = ttrpc::Request::new();
        req.service = service.to_string();
        req.method = method.to_string();
        req.payload = payload.to_vec();
        let ctx = TtrpcContext {
            fd: -1,
            cancel_rx: crossbeam::channel::never(),
            mh: MessageHeader::default(),
            res_tx: self.replies_tx.clone(),
            metadata: HashMap::new(),
            timeout_nano: 0,
            conn_ctx: Arc::new(ConnectionContext::default()),
        };
        let rx = self.replies_rx.lock().unwrap_or_else(|e| e.into_inner());
        let result = handler.handler(ctx, req);
        let reply = rx.try_recv();
        match result {
            Err(e) => {
                assert!(reply.is_err(), "{path}: failed handler also replied");
                Err(e)
            }
            Ok(()) => {
                let (_, bytes) = reply.unwrap_or_else(|_| panic!("{path}: no reply"));
                let response = ttrpc::Response::parse_from_bytes(&bytes).expect("reply decodes");
                Ok(response
                    .status
                    .code
                    .enum_value()
                    .unwrap_or_else(|c| panic!("{path}: unknown status code {c}")))
            }
        }
    }
}

static AGENT: OnceLock<Agent> = OnceLock::new();

/// The status a request must get, given that no container exists.
enum Expect {
    Ok,
    /// INVALID_ARGUMENT when the arguments break a rule, else NOT_FOUND.
    NotFoundIfValid(bool),
    /// A JSON document the oracle does not parse: INVALID_ARGUMENT when the other
    /// arguments break a rule, else INVALID_ARGUMENT (bad JSON) or NOT_FOUND.
    JsonThenNotFound(bool),
}

fn ids_ok(container_id: &str, exec_id: &str) -> bool {
    id_is_valid(container_id) && (exec_id.is_empty() || id_is_valid(exec_id))
}

fn json_len_ok(json: &[u8]) -> bool {
    (2..=MAX_JSON_LEN).contains(&json.len())
}

/// Decodes `payload` as `M` and derives the expected status, or None when it does
/// not decode.
fn expect<M: Message>(payload: &[u8], f: impl FnOnce(&M) -> Expect) -> Option<Expect> {
    M::parse_from_bytes(payload).ok().map(|m| f(&m))
}

/// RPCs by selector byte (keep seeds/make_seeds.py in step with this order).
const RPCS: &[&str] = &[
    "/husk.agent.v1.Health/Check",
    "/husk.agent.v1.Health/Version",
    "/husk.agent.v1.Agent/DestroySandbox",
    "/husk.agent.v1.Agent/CreateContainer",
    "/husk.agent.v1.Agent/StartContainer",
    "/husk.agent.v1.Agent/RemoveContainer",
    "/husk.agent.v1.Agent/ExecProcess",
    "/husk.agent.v1.Agent/SignalProcess",
    "/husk.agent.v1.Agent/WaitProcess",
    "/husk.agent.v1.Agent/ReadStdout",
    "/husk.agent.v1.Agent/ReadStderr",
    "/husk.agent.v1.Agent/WriteStdin",
    "/husk.agent.v1.Agent/CloseStdin",
    "/husk.agent.v1.Agent/TtyWinResize",
    "/husk.agent.v1.Agent/StatsContainer",
    "/husk.agent.v1.Agent/UpdateContainer",
    "/husk.agent.v1.Agent/PauseContainer",
    "/husk.agent.v1.Agent/ResumeContainer",
    "/husk.agent.v1.Agent/ListProcesses",
    "/husk.agent.v1.Agent/ConfigureNetwork",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let agent = AGENT.get_or_init(Agent::new);
    let path = RPCS[usize::from(selector) % RPCS.len()];
    let expected = match path.rsplit('/').next().unwrap_or_default() {
        "Check" | "Version" => expect::<pb::CheckRequest>(payload, |_| Expect::Ok),
        "DestroySandbox" => expect::<pb::DestroySandboxRequest>(payload, |_| Expect::Ok),
        "CreateContainer" => {
            if let Ok(req) = pb::CreateContainerRequest::parse_from_bytes(payload) {
                check_create(agent, &req);
            }
            return;
        }
        "StartContainer" => expect(payload, |r: &pb::StartContainerRequest| {
            Expect::NotFoundIfValid(id_is_valid(&r.container_id))
        }),
        "RemoveContainer" => expect(payload, |r: &pb::RemoveContainerRequest| {
            Expect::NotFoundIfValid(id_is_valid(&r.container_id) && r.timeout_secs <= 3600)
        }),
        "ExecProcess" => expect(payload, |r: &pb::ExecProcessRequest| {
            Expect::JsonThenNotFound(
                ids_ok(&r.container_id, &r.exec_id)
                    && !r.exec_id.is_empty()
                    && json_len_ok(&r.process_json),
            )
        }),
        "SignalProcess" => expect(payload, |r: &pb::SignalProcessRequest| {
            Expect::NotFoundIfValid(
                ids_ok(&r.container_id, &r.exec_id) && (1..=64).contains(&r.signal),
            )
        }),
        "WaitProcess" => expect(payload, |r: &pb::WaitProcessRequest| {
            Expect::NotFoundIfValid(ids_ok(&r.container_id, &r.exec_id))
        }),
        "ReadStdout" | "ReadStderr" => expect(payload, |r: &pb::ReadStreamRequest| {
            Expect::NotFoundIfValid(
                ids_ok(&r.container_id, &r.exec_id) && (1..=MAX_IO_LEN as u32).contains(&r.len),
            )
        }),
        "WriteStdin" => expect(payload, |r: &pb::WriteStreamRequest| {
            Expect::NotFoundIfValid(
                ids_ok(&r.container_id, &r.exec_id) && r.data.len() <= MAX_IO_LEN,
            )
        }),
        "CloseStdin" => expect(payload, |r: &pb::CloseStdinRequest| {
            Expect::NotFoundIfValid(ids_ok(&r.container_id, &r.exec_id))
        }),
        "TtyWinResize" => expect(payload, |r: &pb::TtyWinResizeRequest| {
            let size = 1..=u32::from(u16::MAX);
            Expect::NotFoundIfValid(
                ids_ok(&r.container_id, &r.exec_id)
                    && size.contains(&r.row)
                    && size.contains(&r.column),
            )
        }),
        "StatsContainer" => expect(payload, |r: &pb::StatsContainerRequest| {
            Expect::NotFoundIfValid(id_is_valid(&r.container_id))
        }),
        "UpdateContainer" => expect(payload, |r: &pb::UpdateContainerRequest| {
            Expect::JsonThenNotFound(id_is_valid(&r.container_id) && json_len_ok(&r.resources_json))
        }),
        "ConfigureNetwork" => {
            // Not dispatched (a valid one would reconfigure this host's network):
            // the checks the service runs first must not panic, and what they
            // accept is within the documented bounds.
            if let Ok(req) = pb::ConfigureNetworkRequest::parse_from_bytes(payload) {
                if let Ok(plan) = husk_agent::network::plan(&req) {
                    assert!(plan.interfaces.len() <= husk_agent::network::MAX_INTERFACES);
                    assert!(plan.routes.len() <= husk_agent::network::MAX_ROUTES);
                    assert!(plan.interfaces.iter().all(|i| i.name.len() <= 15
                        && i.name != "lo"
                        && !i.name.contains('/')));
                }
            }
            return;
        }
        "PauseContainer" | "ResumeContainer" | "ListProcesses" => {
            expect(payload, |r: &pb::ContainerRequest| {
                Expect::NotFoundIfValid(id_is_valid(&r.container_id))
            })
        }
        other => unreachable!("no oracle for {other}"),
    };

    let got = agent.call(path, payload);
    match (expected, got) {
        (None, Err(_)) => {}
        (None, Ok(code)) => panic!("{path}: undecodable payload answered {code:?}"),
        (Some(_), Err(e)) => panic!("{path}: decodable payload failed the handler: {e:?}"),
        (Some(Expect::Ok), Ok(code)) => assert_eq!(code, Code::OK, "{path}"),
        (Some(Expect::NotFoundIfValid(valid)), Ok(code)) => {
            let want = if valid {
                Code::NOT_FOUND
            } else {
                Code::INVALID_ARGUMENT
            };
            assert_eq!(code, want, "{path}: arguments valid = {valid}");
        }
        (Some(Expect::JsonThenNotFound(valid)), Ok(code)) => {
            let allowed: &[Code] = if valid {
                &[Code::INVALID_ARGUMENT, Code::NOT_FOUND]
            } else {
                &[Code::INVALID_ARGUMENT]
            };
            assert!(allowed.contains(&code), "{path}: {code:?}, valid = {valid}");
        }
    }
    // Nothing reached a container or the filesystem.
    assert!(agent.containers.ids().is_empty(), "{path} made a container");
    assert!(!agent.paths.bundles.exists(), "{path} wrote a bundle");
});

/// CreateContainer's validation: what it accepts has a valid id, a spec with a
/// process and a rootfs inside the shared directory; what it refuses maps to
/// INVALID_ARGUMENT or UNIMPLEMENTED, never INTERNAL.
fn check_create(agent: &Agent, req: &pb::CreateContainerRequest) {
    let base = &agent.tree.base;
    let result = container::validate_create(
        &agent.paths,
        &req.container_id,
        &req.oci_spec_json,
        &req.rootfs,
        req.stdin,
    );
    let id_valid = id_is_valid(&req.container_id);
    match result {
        Ok(params) => {
            assert!(id_valid && params.id == req.container_id, "id accepted");
            assert!(json_len_ok(&req.oci_spec_json), "spec length accepted");
            assert!(params.spec.process().is_some(), "spec without process");
            assert!(
                relative_components(&req.rootfs).is_some(),
                "rootfs accepted"
            );
            assert!(
                is_inside(&params.rootfs, base),
                "ESCAPE: rootfs {:?} accepted as {:?}",
                req.rootfs,
                params.rootfs
            );
        }
        Err(e) => {
            if !id_valid {
                assert!(
                    matches!(e, ContainerError::Invalid(ValidationError::Id { .. })),
                    "bad id first: {e:?}"
                );
            }
            if let ContainerError::Invalid(ValidationError::Path(_)) = e {
                assert!(relative_components(&req.rootfs).is_none(), "{e:?}");
            }
            let code = match ttrpc::Error::from(e) {
                ttrpc::Error::RpcStatus(s) => s.code(),
                other => panic!("not a status: {other:?}"),
            };
            assert!(
                matches!(code, Code::INVALID_ARGUMENT | Code::UNIMPLEMENTED),
                "CreateContainer validation answered {code:?}"
            );
        }
    }
}
