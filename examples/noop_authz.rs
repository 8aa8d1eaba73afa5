//! The floor of the load benchmark (`scripts/bench-load.sh`): an ext_authz gRPC server that
//! answers every Check with OK and does nothing else.
//!
//! Same transport as checkpoint (tonic, `tcp_nodelay`), one tokio worker thread, so that the
//! difference between this server and checkpoint is the work checkpoint does per Check.
//!
//! With `--identity`, every answer is instead a copy of what checkpoint answers for the bench's
//! user (alice, group admin, strict mode): the three identity headers, `mia-allowed` to remove,
//! and the decision as dynamic metadata. Behind Envoy (scenario d0h) this separates what Envoy
//! spends applying checkpoint's answer from what checkpoint spends computing it.
//!
//! Usage: `noop_authz 127.0.0.1:50061 [--identity]`

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
    let addr: std::net::SocketAddr = args
        .next()
        .ok_or_else(|| {
            anyhow::anyhow!("usage: noop_authz ADDRESS [--identity] (e.g. 127.0.0.1:50061)")
        })?
        .parse()?;
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
        Some("--identity-set") => {
            let mut a = identity_answer();
            a.dynamic_metadata = None;
            if let Some(HttpResponse::OkResponse(ok)) = &mut a.http_response {
                ok.headers_to_remove.clear();
            }
            a
        }
        Some("--identity-one") => {
            let mut a = identity_answer();
            a.dynamic_metadata = None;
            if let Some(HttpResponse::OkResponse(ok)) = &mut a.http_response {
                ok.headers_to_remove.clear();
                ok.headers.truncate(1);
            }
            a
        }
        Some(other) => anyhow::bail!("unknown option {other}"),
    };
    let runtime = if std::env::var("NOOP_CT").is_ok() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        if let Ok(path) = std::env::var("NOOP_UDS") {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(Noop { answer }))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l))
                .await?;
            return Ok::<(), anyhow::Error>(());
        }
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AuthorizationServer::new(Noop { answer }))
            .serve(addr)
            .await?;
        Ok(())
    })?;
    Ok(())
}
