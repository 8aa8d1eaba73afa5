//! The floor of the load benchmark (`scripts/bench-load.sh`): an ext_authz gRPC server that
//! answers every Check with OK and does nothing else.
//!
//! Same transport as checkpoint (tonic, `TCP_NODELAY`, or a Unix socket), the same scheduler
//! checkpoint runs with one worker (tokio's single-threaded one) and the same allocator
//! (jemalloc), so that the difference between this server and checkpoint is the work checkpoint
//! does per Check.
//!
//! With `--identity`, every answer is instead a copy of what checkpoint answers for the bench's
//! user (alice, group admin, strict mode): the three identity headers, `mia-allowed` to remove,
//! and the decision as dynamic metadata (checkpoint with `CHECKPOINT_DYNAMIC_METADATA=true`);
//! `--identity-headers` is the same without the metadata (checkpoint's default). Behind Envoy
//! (scenario d0h, profile targets envoy-*) this separates what Envoy spends applying
//! checkpoint's answer from what checkpoint spends computing it.
//!
//! Usage: `noop_authz 127.0.0.1:50061 [--identity | --identity-headers]`, or with
//! `unix:/path/grpc.sock` as the address.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

/// The allocator checkpoint's binary runs with (src/main.rs), so that the floor differs from
/// checkpoint only by checkpoint's work.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Noop {
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
    }
}

/// checkpoint's allow for alice (see `response.rs`), built once.
fn identity_answer() -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let fields: HashMap<String, Value> = [
        ("decision".to_owned(), string("allow")),
        ("reason".to_owned(), string("allowed")),
        ("user_id".to_owned(), string("alice")),
    ]
    .into();
    CheckResponse {
        status: Some(rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header("miauserid", "alice"),
                header("miausergroups", "admin"),
                header("miauserproperties", "{}"),
            ],
            headers_to_remove: vec!["mia-allowed".into()],
            ..Default::default()
        })),
        dynamic_metadata: Some(Struct { fields }),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: noop_authz ADDRESS [--identity | --identity-headers] \
                 (ADDRESS: 127.0.0.1:50061 or unix:/path/grpc.sock)";
    let addr: checkpoint::config::ListenAddr = args
        .next()
        .ok_or_else(|| anyhow::anyhow!(usage))?
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{e}; {usage}"))?;
    let answer = match args.next().as_deref() {
        None => CheckResponse {
            status: Some(rpc::Status::default()),
            ..Default::default()
        },
        Some("--identity") => identity_answer(),
        Some("--identity-headers") => CheckResponse {
            dynamic_metadata: None,
            ..identity_answer()
        },
        Some(other) => anyhow::bail!("unknown option {other}; {usage}"),
    };
    // The scheduler checkpoint picks for one worker (see `runtime` in src/main.rs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = checkpoint::GrpcListener::bind(&addr, 0o600).await?;
        let server = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop { answer }));
        match listener {
            checkpoint::GrpcListener::Tcp(listener) => {
                server
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    )
                    .await?
            }
            checkpoint::GrpcListener::Unix { listener, .. } => {
                server
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await?
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
