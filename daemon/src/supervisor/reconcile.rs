//! Configured mounts: bringing the table in line with the configuration (at start and on
//! reload), retrying the ones that fail with growing pauses, and `supervise`, which notices
//! mounts that went away behind the daemon's back and runs periodic refreshes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn, Instrument};

use super::{
    daemon_caller, mountpoint, release, unix_now, ConnectSpec, MountEntry, MountState, MountStatus,
    Supervisor,
};
use crate::config::MountConfig;
use crate::fs::KernelCache;

/// A configured mount that is not mounted now, and when to try again.
pub(super) struct Retrying {
    pub(super) config: MountConfig,
    pub(super) reason: String,
    attempts: u32,
    next_try: Instant,
    /// An attempt is running now.
    in_flight: bool,
}

impl Retrying {
    pub(super) fn status(&self) -> MountStatus {
        MountStatus {
            name: self.config.name.clone(),
            mountpoint: self.config.mountpoint.clone(),
            source: self.config.location.describe(),
            repo: self.config.location.repo(),
            git_ref: self.config.git_ref.clone(),
            commit: String::new(),
            commit_time: 0,
            state: MountState::Retrying,
            fetched_objects: 0,
            fetched_bytes: 0,
            cache_hits: 0,
            owner_uid: 0,
            from_config: true,
            error: self.reason.clone(),
            refreshed_at: 0,
            read_path: "",
            writable: self.config.writable,
            workspace: Default::default(),
        }
    }
}

/// How long to wait before attempt `attempts + 1` of a failed configured mount.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}

impl Supervisor {
    /// Brings the configured mounts in line with `wanted`: mounts new entries, unmounts
    /// removed ones, remounts changed ones and leaves the rest alone. Returns once every new
    /// entry has been tried once; failures are retried with backoff by `supervise`.
    pub async fn apply_config(self: &Arc<Self>, wanted: &[MountConfig]) {
        let (to_unmount, to_mount) = {
            let mut table = self.table.lock().await;
            let unwanted = |c: &MountConfig| !wanted.contains(c);
            table.retrying.retain(|r| !unwanted(&r.config));
            let mut to_unmount = Vec::new();
            let mut index = 0;
            while index < table.mounts.len() {
                if table.mounts[index].config.as_ref().is_some_and(unwanted) {
                    to_unmount.push(table.mounts.swap_remove(index));
                } else {
                    index += 1;
                }
            }
            let present = |c: &MountConfig| {
                table.mounts.iter().any(|m| m.config.as_ref() == Some(c))
                    || table.retrying.iter().any(|r| &r.config == c)
            };
            let to_mount: Vec<MountConfig> =
                wanted.iter().filter(|c| !present(c)).cloned().collect();
            (to_unmount, to_mount)
        };
        for entry in to_unmount {
            info!(mount = %entry.name, "no longer configured as it was; unmounting");
            release(entry).await;
        }
        let attempts = to_mount.into_iter().map(|config| {
            let this = Arc::clone(self);
            async move { this.try_configured(config, 0).await }
        });
        futures::future::join_all(attempts).await;
    }

    /// One attempt at a configured mount; on failure it joins the retry list.
    async fn try_configured(&self, config: MountConfig, attempts: u32) {
        let span = tracing::info_span!("configured", mount = %config.name);
        async {
            if let Err(e) = mountpoint::prepare_configured(&config.mountpoint) {
                return self.retry_later(config, attempts, e.to_string()).await;
            }
            let spec = ConnectSpec::from(&config);
            if let Err(e) = self
                .connect_as(spec, daemon_caller(), Some(config.clone()))
                .await
            {
                self.retry_later(config, attempts, e.to_string()).await;
            }
        }
        .instrument(span)
        .await
    }

    async fn retry_later(&self, config: MountConfig, attempts: u32, reason: String) {
        let wait = backoff(attempts);
        warn!(
            mount = %config.name, repo = %config.location, error = %reason,
            retry_in = ?wait, "configured mount failed"
        );
        let mut table = self.table.lock().await;
        table.retrying.retain(|r| r.config.name != config.name);
        table.retrying.push(Retrying {
            config,
            reason,
            attempts: attempts + 1,
            next_try: Instant::now() + wait,
            in_flight: false,
        });
    }

    /// Notices mounts that went away without a disconnect, retries failed configured mounts
    /// that are due and starts periodic refreshes. Called every second or so.
    pub async fn supervise(self: &Arc<Self>) {
        let mut workspaces = Vec::new();
        let due = {
            let mut table = self.table.lock().await;
            let mut index = 0;
            while index < table.mounts.len() {
                if !table.mounts[index].is_lost() {
                    index += 1;
                    continue;
                }
                let entry = table.mounts.swap_remove(index);
                let reason = "the filesystem was unmounted behind the daemon's back".to_string();
                warn!(mount = %entry.name, mountpoint = %entry.mountpoint.display(), "{reason}");
                match entry.config.clone() {
                    Some(config) => table.retrying.push(Retrying {
                        config,
                        reason,
                        attempts: 0,
                        next_try: Instant::now(),
                        in_flight: false,
                    }),
                    None => {
                        let mut status = entry.status();
                        status.state = MountState::Lost;
                        status.error = reason;
                        table.lost.push(status);
                    }
                }
            }
            let now = Instant::now();
            for entry in table.mounts.iter_mut() {
                let interval = entry.config.as_ref().and_then(|c| c.refresh_interval);
                if let (Some(interval), Some(next)) = (interval, entry.next_refresh) {
                    if next <= now {
                        entry.next_refresh = Some(now + interval);
                        match entry.overlay {
                            // A workspace's overlay comes off to move: through the table.
                            Some(_) => workspaces.push(entry.name.to_string()),
                            None => spawn_refresh(entry),
                        }
                    }
                }
            }
            let mut due = Vec::new();
            for retry in table.retrying.iter_mut() {
                if !retry.in_flight && retry.next_try <= now {
                    retry.in_flight = true;
                    due.push((retry.config.clone(), retry.attempts));
                }
            }
            due
        };
        for name in workspaces {
            let this = Arc::clone(self);
            let span = tracing::info_span!("refresh", mount = %name);
            tokio::spawn(
                async move {
                    // Never forced: a workspace in use waits for the next turn.
                    match this.refresh(&name, false, daemon_caller()).await {
                        Ok(done) if !done.conflicts.is_empty() => {
                            warn!(
                                conflicts = done.conflicts.len(),
                                "refreshed, with conflicts"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "periodic refresh of a workspace put off"),
                    }
                }
                .instrument(span),
            );
        }
        for (config, attempts) in due {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                info!(mount = %config.name, attempt = attempts + 1, "retrying configured mount");
                this.try_configured(config, attempts).await;
            });
        }
    }
}

/// A periodic refresh of a configured mount, in the background.
fn spawn_refresh(entry: &MountEntry) {
    let (fs, refreshed_at) = (entry.fs.clone(), entry.refreshed_at.clone());
    let notifier = entry.notifier.clone();
    let span = tracing::info_span!("refresh", mount = %entry.name);
    tokio::spawn(
        async move {
            match fs.refresh().await {
                Ok(stale) => {
                    if let Some(names) = stale {
                        notifier.stale_root_entries(names);
                    }
                    refreshed_at.store(unix_now(), Ordering::Relaxed);
                }
                Err(e) => warn!(error = %e, "periodic refresh failed"),
            }
        }
        .instrument(span),
    );
}
