//! The gRPC control service: turns requests into supervisor calls and errors into statuses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use megafs_proto::v1::cache_request::Action;
use megafs_proto::v1::{
    change, CacheReply, CacheRequest, Change, ChangesReply, ChangesRequest, ConnectReply,
    ConnectRequest, DiffChunk, DiffRequest, DisconnectReply, DisconnectRequest, DoctorCheck,
    DoctorReply, DoctorRequest, DuMount, DuReply, DuRequest, Latency, MountInfo, MountStats,
    OpStats, PrefetchProgress as ProgressMessage, PrefetchRequest, RefreshReply, RefreshRequest,
    ResetReply, ResetRequest, StatsReply, StatsRequest, StatusReply, StatusRequest,
};
use megafs_proto::Control;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::{info, warn, Instrument};

use crate::cache_use;
use crate::doctor;
use crate::fs::FsError;
use crate::fs::{MountFs, Pattern, PrefetchProgress};
use crate::location::Location;
use crate::metrics::{MountMetrics, Op, Percentiles, Tier};
use crate::source::SourceError;
use crate::store::Store;
use crate::supervisor::{Caller, ConnectSpec, MountStatus, Supervisor, SupervisorError};
use crate::workspace::changes::{ChangeKind, ChangesError};
use crate::workspace::{Usage, WorkspaceError};

pub struct ControlService {
    supervisor: Arc<Supervisor>,
    store: Arc<Store>,
    cache_dir: PathBuf,
    config_file: Option<PathBuf>,
}

impl ControlService {
    pub fn new(
        supervisor: Arc<Supervisor>,
        store: Arc<Store>,
        cache_dir: PathBuf,
        config_file: Option<PathBuf>,
    ) -> Self {
        ControlService {
            supervisor,
            store,
            cache_dir,
            config_file,
        }
    }
}

/// The caller's identity from the socket (SO_PEERCRED). A caller that cannot be identified is
/// refused.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().unwrap_or(0),
        })
        .ok_or_else(|| Status::permission_denied("cannot identify the caller on the socket"))
}

fn to_status(e: SupervisorError) -> Status {
    use SupervisorError as E;
    let message = e.to_string();
    match e {
        E::Invalid(_) | E::Location(_) | E::Name(_) | E::Ambiguous { .. } => {
            Status::invalid_argument(message)
        }
        E::NotWritable(_) => Status::failed_precondition(message),
        E::Workspace(WorkspaceError::NotYours { .. }) => Status::permission_denied(message),
        E::Workspace(WorkspaceError::OtherRepository { .. }) => {
            Status::failed_precondition(message)
        }
        E::Workspace(_) => Status::internal(message),
        E::Refused(_) => Status::permission_denied(message),
        E::MountpointMissing(_) | E::UnknownMount(_) => Status::not_found(message),
        E::NameInUse(_) | E::AlreadyMounted(_) => Status::already_exists(message),
        E::MountpointNotDir(_) | E::MountpointNotEmpty(_) | E::Busy(_) | E::InUse { .. } => {
            Status::failed_precondition(message)
        }
        E::Timeout(_) => Status::deadline_exceeded(message),
        E::Source(source) => match source {
            SourceError::RepoNotFound(_) | SourceError::UnknownRef { .. } => {
                Status::not_found(message)
            }
            SourceError::Unsupported(_)
            | SourceError::AbbreviatedId { .. }
            | SourceError::AmbiguousId { .. } => Status::invalid_argument(message),
            SourceError::Unreachable { .. } | SourceError::Timeout { .. } => {
                Status::unavailable(message)
            }
            _ => Status::internal(message),
        },
        E::Changes(ChangesError::Commit(FsError::Source(_) | FsError::Timeout(_))) => {
            Status::unavailable(message)
        }
        E::Changes(_) | E::Fs(_) | E::Mount { .. } | E::Unmount { .. } | E::Internal(_) => {
            Status::internal(message)
        }
    }
}

/// The status for `e`; a refusal is logged with who was refused and by which rule.
fn refused_or(e: SupervisorError, caller: &Caller) -> Status {
    if let SupervisorError::Refused(refusal) = &e {
        warn!(
            uid = caller.uid, pid = caller.pid, rule = %refusal.rule, reason = %refusal.reason,
            "request refused"
        );
    }
    to_status(e)
}

fn to_info(s: MountStatus) -> MountInfo {
    MountInfo {
        name: s.name.to_string(),
        mountpoint: s.mountpoint.display().to_string(),
        source: s.source,
        commit: s.commit,
        state: s.state.as_str().to_string(),
        fetched_objects: s.fetched_objects,
        fetched_bytes: s.fetched_bytes,
        cache_hits: s.cache_hits,
        git_ref: s.git_ref,
        commit_time: s.commit_time,
        owner_uid: s.owner_uid,
        error: s.error,
        from_config: s.from_config,
        refreshed_at: s.refreshed_at,
        read_path: s.read_path.to_string(),
        writable: s.writable,
        changed_paths: s.workspace.paths,
        workspace_bytes: s.workspace.bytes,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn connect(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<ConnectReply>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        info!(
            repo = %megafs_proto::location::redacted(&r.repo), mountpoint = %r.mountpoint,
            uid = caller.uid, gid = caller.gid, pid = caller.pid, "connect requested"
        );
        let status = async {
            let spec = ConnectSpec {
                location: Location::parse(&r.repo, Some(&r.mega_url))?,
                mountpoint: PathBuf::from(&r.mountpoint),
                git_ref: r.git_ref.clone(),
                name: r.name.clone(),
                allow_other: r.allow_other,
                writable: r.writable,
                credentials: None,
                proxy: None,
            };
            self.supervisor.connect(spec, caller).await
        }
        .await
        .map_err(|e| {
            // A refusal is logged as such below.
            if !matches!(e, SupervisorError::Refused(_)) {
                warn!(mountpoint = %r.mountpoint, uid = caller.uid, error = %e, "connect failed");
            }
            refused_or(e, &caller)
        })?;
        Ok(Response::new(ConnectReply {
            mount: Some(to_info(status)),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        info!(
            target = %r.target, force = r.force, discard = r.discard, uid = caller.uid,
            pid = caller.pid, "disconnect requested"
        );
        let (status, discarded) = self
            .supervisor
            .disconnect(&r.target, r.force, r.discard, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        Ok(Response::new(DisconnectReply {
            mount: status.map(to_info),
            discarded: discarded.map(describe_usage).unwrap_or_default(),
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshReply>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let target = request.target;
        info!(%target, uid = caller.uid, pid = caller.pid, "refresh requested");
        let refreshed = self
            .supervisor
            .refresh(&target, request.force, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        Ok(Response::new(RefreshReply {
            mount: Some(to_info(refreshed.mount)),
            previous_commit: refreshed.before,
            conflicts: refreshed
                .conflicts
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
        }))
    }

    type PrefetchStream = tokio_stream::wrappers::ReceiverStream<Result<ProgressMessage, Status>>;

    async fn prefetch(
        &self,
        request: Request<PrefetchRequest>,
    ) -> Result<Response<Self::PrefetchStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let patterns = r
            .patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fs = self
            .supervisor
            .mount_fs(&r.target, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        info!(target = %r.target, patterns = ?r.patterns, depth = r.depth, uid = caller.uid, "prefetch requested");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let span = tracing::info_span!("prefetch", mount = %fs.name(), uid = caller.uid);
        tokio::spawn(report_prefetch(fs, patterns, r.depth, tx).instrument(span));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn cache(&self, request: Request<CacheRequest>) -> Result<Response<CacheReply>, Status> {
        let caller = caller(&request)?;
        let action = request.into_inner().action();
        let store = self.store.clone();
        if action != Action::Usage {
            let access = self.supervisor.access();
            access
                .may_change_cache(&caller)
                .map_err(|e| refused_or(e.into(), &caller))?;
        }
        let freed = match action {
            Action::Usage => 0,
            Action::Gc => {
                info!(uid = caller.uid, "cache gc requested");
                tokio::task::spawn_blocking(move || store.evict_to_limit())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
            Action::Clear => {
                info!(uid = caller.uid, "cache clear requested");
                tokio::task::spawn_blocking(move || store.clear())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
        };
        let usage = self.store.usage();
        Ok(Response::new(CacheReply {
            dir: self.cache_dir.display().to_string(),
            bytes: usage.bytes,
            limit: usage.limit,
            objects: usage.objects,
            hits: usage.hits,
            misses: usage.misses,
            evicted: usage.evicted,
            freed,
        }))
    }

    async fn changes(
        &self,
        request: Request<ChangesRequest>,
    ) -> Result<Response<ChangesReply>, Status> {
        let caller = caller(&request)?;
        let target = request.into_inner().target;
        let (commit, changes) = self
            .supervisor
            .changes(&target, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        let changes = changes
            .into_iter()
            .map(|c| {
                let mut path = c.path.as_bytes().to_vec();
                if c.whole_dir {
                    path.push(b'/');
                }
                let kind = match c.kind {
                    ChangeKind::Added => change::Kind::Added,
                    ChangeKind::Modified => change::Kind::Modified,
                    ChangeKind::Deleted => change::Kind::Deleted,
                    ChangeKind::TypeChanged => change::Kind::TypeChanged,
                };
                Change {
                    path,
                    kind: kind as i32,
                    conflict: c.conflict,
                }
            })
            .collect();
        Ok(Response::new(ChangesReply { commit, changes }))
    }

    async fn doctor(
        &self,
        request: Request<DoctorRequest>,
    ) -> Result<Response<DoctorReply>, Status> {
        let caller = caller(&request)?;
        let config_file = self.config_file.clone();
        let (dir, usage) = (self.cache_dir.clone(), self.store.usage());
        // Reading files and probing mounts may block: off the runtime's threads.
        let local = tokio::task::spawn_blocking(move || {
            let free = crate::sys::filesystem_free(&dir);
            vec![
                doctor::configuration(config_file.as_deref()),
                doctor::stale_mounts(),
                doctor::cache_room(&dir, &usage, free),
            ]
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let servers = doctor::servers(self.supervisor.locations(caller).await).await;
        let checks = local
            .into_iter()
            .chain(servers)
            .map(|c| DoctorCheck {
                name: c.name,
                status: c.verdict.name().to_string(),
                detail: c.detail,
                fix: c.fix,
            })
            .collect();
        Ok(Response::new(DoctorReply { checks }))
    }

    async fn du(&self, request: Request<DuRequest>) -> Result<Response<DuReply>, Status> {
        let caller = caller(&request)?;
        let roots = self.supervisor.roots(caller).await;
        let workspaces: HashMap<String, Usage> = self
            .supervisor
            .status(caller)
            .await
            .into_iter()
            .filter(|m| m.writable)
            .map(|m| (m.name.to_string(), m.workspace))
            .collect();
        let store = self.store.clone();
        // Reads every cached tree of every mount: off the runtime's threads.
        let (found, gc_frees) = tokio::task::spawn_blocking(move || {
            (cache_use::measure(&store, &roots), store.gc_would_free())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let usage = self.store.usage();
        let mounts = found
            .mounts
            .into_iter()
            .map(|(name, m)| {
                let workspace = workspaces.get(name.as_str());
                DuMount {
                    name: name.to_string(),
                    objects: m.objects,
                    bytes: m.bytes,
                    shared_objects: m.shared_objects,
                    shared_bytes: m.shared_bytes,
                    record_bytes: m.record_bytes,
                    writable: workspace.is_some(),
                    workspace_paths: workspace.map_or(0, |w| w.paths),
                    workspace_bytes: workspace.map_or(0, |w| w.bytes),
                }
            })
            .collect();
        Ok(Response::new(DuReply {
            dir: self.cache_dir.display().to_string(),
            bytes: usage.bytes,
            objects: usage.objects,
            limit: usage.limit,
            mounts,
            shared_objects: found.shared_objects,
            shared_bytes: found.shared_bytes,
            unreached_bytes: found.unreached_bytes,
            record_bytes: found.record_bytes,
            gc_frees,
        }))
    }

    type DiffStream = tokio_stream::wrappers::ReceiverStream<Result<DiffChunk, Status>>;

    async fn diff(
        &self,
        request: Request<DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let (patches, mut written) = tokio::sync::mpsc::channel(4);
        let job = self
            .supervisor
            .diff(&request.target, &request.paths, caller, patches)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let span = tracing::info_span!("diff", mount = %request.target, uid = caller.uid);
        tokio::spawn(
            async move {
                let forward = async {
                    while let Some(patch) = written.recv().await {
                        if tx.send(Ok(DiffChunk { patch })).await.is_err() {
                            break;
                        }
                    }
                };
                let (done, ()) = tokio::join!(job, forward);
                match done {
                    Ok(files) => info!(files, "diff sent"),
                    Err(e) => {
                        warn!(error = %e, "diff failed");
                        let _ = tx.send(Err(to_status(e))).await;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetReply>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let removed = self
            .supervisor
            .reset(&request.target, &request.paths, request.force, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        Ok(Response::new(ResetReply { removed }))
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let caller = caller(&request)?;
        let target = request.into_inner().target;
        let mounts = self
            .supervisor
            .metrics(&target, caller)
            .await
            .map_err(|e| refused_or(e, &caller))?;
        Ok(Response::new(StatsReply {
            mounts: mounts
                .iter()
                .map(|(name, metrics)| mount_stats(name.as_str(), metrics))
                .collect(),
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let caller = caller(&request)?;
        let mounts = self.supervisor.status(caller).await;
        Ok(Response::new(StatusReply {
            mounts: mounts.into_iter().map(to_info).collect(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            daemon_pid: std::process::id(),
            config_file: self
                .config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }))
    }
}

/// What a discarded workspace held, for people: "12 changed paths, 3.4 MiB".
fn describe_usage(usage: Usage) -> String {
    let mib = usage.bytes as f64 / f64::from(1 << 20);
    format!("{} changed paths, {mib:.1} MiB", usage.paths)
}

fn latency(p: Percentiles) -> Latency {
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Latency {
        p50_ns: ns(p.p50),
        p90_ns: ns(p.p90),
        p99_ns: ns(p.p99),
        max_ns: ns(p.max),
    }
}

fn mount_stats(name: &str, m: &MountMetrics) -> MountStats {
    use std::sync::atomic::Ordering::Relaxed;
    let ops = Op::ALL
        .iter()
        .filter_map(|&op| {
            let o = m.op(op);
            let percentiles = o.latency.percentiles();
            (percentiles.count > 0).then(|| OpStats {
                op: op.name().to_string(),
                count: percentiles.count,
                failed: o.errors.load(Relaxed),
                from_memory: o.answered[Tier::Memory as usize].load(Relaxed),
                from_cache: o.answered[Tier::Cache as usize].load(Relaxed),
                from_server: o.answered[Tier::Server as usize].load(Relaxed),
                latency: Some(latency(percentiles)),
            })
        })
        .collect();
    let server = m.server();
    let server_latency = server.latency.percentiles();
    MountStats {
        name: name.to_string(),
        since: m.since,
        ops,
        server_requests: server_latency.count,
        server_failed: server.errors.load(Relaxed),
        server_latency: Some(latency(server_latency)),
        fetched_objects: m.fetched_objects.load(Relaxed),
        fetched_bytes: m.fetched_bytes.load(Relaxed),
        cache_hits: m.cache_hits.load(Relaxed),
        fetches_in_flight: m.fetches_in_flight.load(Relaxed),
    }
}

/// How often a prefetch reports its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs a prefetch and sends its progress to `tx` until it ends; stops it if the client goes.
async fn report_prefetch(
    fs: Arc<MountFs>,
    patterns: Vec<Pattern>,
    depth: u32,
    tx: tokio::sync::mpsc::Sender<Result<ProgressMessage, Status>>,
) {
    let progress = Arc::new(PrefetchProgress::default());
    let mut work = {
        let progress = progress.clone();
        tokio::spawn(
            async move { fs.prefetch(&patterns, depth, &progress).await }.in_current_span(),
        )
    };
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tx.closed() => {
                // Said only once the work is gone: nothing it fetched lands afterwards.
                work.abort();
                let _ = work.await;
                info!("prefetch stopped: the client went away");
                return;
            }
            _ = ticks.tick() => {
                // A client too slow to take reports only misses some: progress is cumulative.
                let _ = tx.try_send(Ok(progress_message(&progress, false, String::new())));
            }
        }
    };
    let error = match outcome {
        Ok(Ok(())) => progress.last_error(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("prefetch task: {e}"),
    };
    info!(
        files = progress
            .files_done
            .load(std::sync::atomic::Ordering::Relaxed),
        failed = progress
            .files_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        "prefetch finished"
    );
    let _ = tx.send(Ok(progress_message(&progress, true, error))).await;
}

fn progress_message(p: &PrefetchProgress, finished: bool, error: String) -> ProgressMessage {
    use std::sync::atomic::Ordering::Relaxed;
    ProgressMessage {
        files_total: p.files_total.load(Relaxed),
        files_done: p.files_done.load(Relaxed),
        files_failed: p.files_failed.load(Relaxed),
        bytes_done: p.bytes_done.load(Relaxed),
        walk_done: p.walk_done.load(Relaxed),
        finished,
        error: if error.is_empty() && !finished {
            p.last_error()
        } else {
            error
        },
    }
}
