//! The floor of the load benchmark (`scripts/bench-load.sh`): an ext_authz gRPC server that
//! answers every Check with OK and does nothing else.
//!
//! Same transport as checkpoint (tonic, `tcp_nodelay`), one tokio worker thread, so that the
//! difference between this server and checkpoint is the work checkpoint does per Check.
//!
//! Usage: `noop_authz 127.0.0.1:50061`

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc;

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: noop_authz ADDRESS (e.g. 127.0.0.1:50061)"))?
        .parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AuthorizationServer::new(Noop))
            .serve(addr)
            .await
    })?;
    Ok(())
}
