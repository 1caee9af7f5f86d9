//! What the current directory implementations do, pinned: a dirpool link
//! against the loopback directory running each implementation's model
//! (`dirpool_tests::directory_model`), one test per difference of issue 16.
//! Each test names the implementation files its expectations come from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dirpool::joinmarket::{DirectoryConnection, JmConfig, JmError, Network, Nick};
use dirpool::{HandshakeContext, Runtime, TokioRuntime};
use dirpool_tests::directory_model::DirectoryProfile;
use dirpool_tests::{JmBehaviour, JmDirectory, JmModelled};

const NICK: &str = "J5xhGSWE7VrxM7sO";

fn config(network: Network) -> JmConfig {
    JmConfig::new(Nick::parse(NICK).unwrap(), network)
}

/// A loopback directory modelling `profile`, serving `network`.
fn directory(profile: DirectoryProfile, network: &str) -> JmDirectory {
    let directory = JmDirectory::start(JmBehaviour::Modelled(JmModelled::new(profile))).unwrap();
    directory.set_network(network);
    directory
}

/// Opens a link to `directory` over plain TCP (no proxy: the handshake is
/// what is tested).
async fn open(directory: &JmDirectory, config: JmConfig) -> Result<DirectoryConnection, JmError> {
    let stream = tokio::net::TcpStream::connect(directory.addr())
        .await
        .unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
    let context = HandshakeContext::new(runtime, Instant::now() + Duration::from_secs(30));
    DirectoryConnection::open(&context, Box::pin(stream), config).await
}

/// Item 3. A client of another network: joinmarket-ng closes without a
/// reply (`directory_server/src/directory_server/handshake_handler.py`,
/// "Network mismatch", and `server.py`, which returns on `HandshakeError`);
/// joinmarket-rs (`crates/joinmarket-dn/src/peer.rs`, `NetworkMismatch`)
/// and the reference (`src/jmdaemon/onionmc.py`, `process_handshake`)
/// reply `accepted: false` naming their own network, which we report as
/// [`JmError::WrongNetwork`], not as a plain rejection.
#[tokio::test]
async fn a_directory_of_another_network_is_wrong_network_where_it_says_so() {
    for profile in DirectoryProfile::ALL {
        let directory = directory(profile, "signet");
        let error = open(&directory, config(Network::Regtest))
            .await
            .expect_err("refused");
        match profile {
            DirectoryProfile::JoinmarketNg => {
                assert!(matches!(error, JmError::ClosedWithoutReply), "{error:?}");
            }
            _ => assert!(
                matches!(
                    &error,
                    JmError::WrongNetwork { ours: Network::Regtest, theirs } if theirs == "signet"
                ),
                "{profile:?}: {error:?}"
            ),
        }
        assert_eq!(
            directory.rejections(),
            ["network `regtest` is not `signet`"],
            "{profile:?}"
        );
        // The same client on the directory's network is accepted.
        let link = open(&directory, config(Network::Signet)).await;
        assert!(link.is_ok(), "{profile:?}: {link:?}");
    }
}
