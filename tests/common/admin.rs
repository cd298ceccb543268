//! An `AdminService` client for tests, sending the operator token the way operators do.

use chatrooms::proto::admin::admin_service_client::AdminServiceClient;
use tonic::{
    Request, Status, metadata::MetadataValue, service::interceptor::InterceptedService,
    transport::Channel,
};

use super::TestServer;

/// The token the admin tests configure (`[admin] token`).
pub const TOKEN: &str = "test-admin-token-0123456789";

pub type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
pub type Admin = AdminServiceClient<InterceptedService<Channel, AddToken>>;

/// An admin client that sends `authorization: Bearer <token>` (nothing when `None`).
pub async fn admin(server: &TestServer, token: Option<&str>) -> Admin {
    let header: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let add: AddToken = Box::new(move |mut request: Request<()>| {
        if let Some(value) = &header {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    });
    AdminServiceClient::with_interceptor(server.channel().await, add)
}
