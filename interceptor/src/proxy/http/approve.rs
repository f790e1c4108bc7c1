//! approve: a request held until an approver decides, withdrawn if its
//! client goes away.
use super::*;

/// A held request's approval, withdrawn if the request goes away before an
/// answer (hyper drops the request's future when its client disconnects).
pub(super) struct Held {
    proxy: Arc<super::Proxy>,
    id: u64,
    answered: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.proxy.approvals.forget(self.id);
        let (proxy, id) = (self.proxy.clone(), self.id);
        let withdraw = async move {
            use crate::approval::State;
            let Ok(Some(mut a)) = proxy.store.approval(id) else {
                return;
            };
            if a.state != State::Pending {
                return;
            }
            a.state = State::Withdrawn;
            a.decided_ms = Some(store::now_ms());
            a.approver = Some("the client went away".into());
            let _ = proxy.store.put_approval(&a);
            let _ = proxy.store.flush_async().await;
            if let Ok(seq) = proxy.store.audit(
                "approval",
                &serde_json::json!({"approval": id, "decision": a.state, "rule": a.rule,
                                   "workload": a.workload, "reason": "the client went away"}),
            ) {
                let _ = proxy.store.durable(seq).await;
            }
            tracing::info!(approval = id, "approval withdrawn: the client went away");
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(withdraw);
        }
    }
}

impl HttpConn {
    /// Holds the request until an approver decides, or the rule's timeout.
    pub(super) async fn await_approval(
        &self,
        rec: &mut RequestRecord,
        d: &Decision,
    ) -> Result<(), Refusal> {
        use crate::approval::{Approval, Asking, Outcome, State};
        let spec = d.effects.approval.expect("approve rules carry their spec");
        let rule = d.rule.clone().unwrap_or_default();
        let store = &self.proxy.store;
        let now = store::now_ms();
        let destination = self.destination.to_string();
        let asking = Asking {
            workload: &self.workload,
            uid: self.uid,
            user: rec.user.as_deref(),
            rule: &rule,
            method: &rec.method,
            host: &rec.host,
            target: &rec.path,
            destination: &destination,
            tls: self.sni.is_some(),
        };
        if self.proxy.approvals.window_open(&asking, now) {
            rec.reason = format!("approved earlier for rule {rule} (window open)");
            return Ok(());
        }
        let unavailable = || {
            Refusal::new(
                Why::ApprovalUnavailable,
                "the approval could not be recorded",
            )
        };
        let mut a = Approval {
            id: store.next_approval_id(),
            created_ms: now,
            state: State::Pending,
            rule: rule.clone(),
            workload: self.workload.clone(),
            pid: self.pid,
            uid: self.uid,
            user: rec.user.clone(),
            method: rec.method.clone(),
            host: rec.host.clone(),
            path: rec.path.clone(),
            destination,
            tls: self.sni.is_some(),
            session: self.session,
            expires_ms: now + spec.timeout.as_millis() as u64,
            decided_ms: None,
            approver: None,
            reason: None,
            window_until_ms: None,
            window_s: spec.window.map(|w| w.as_secs()),
            window_scope: spec.window_scope,
        };
        let rx = self
            .proxy
            .approvals
            .hold(a.id, &self.workload, self.proxy.max_pending_approvals)
            .map_err(|e| {
                Refusal::new(Why::TooManyPending, e.to_string()).by_rule(d.rule.clone())
            })?;
        // From here the approval is withdrawn if this future is dropped
        // (the client went away): it must not stay pending, take the
        // workload's room, or be approved for nobody.
        let mut held = Held {
            proxy: self.proxy.clone(),
            id: a.id,
            answered: false,
        };
        store.put_approval(&a).map_err(|_| unavailable())?;
        store.flush_async().await.map_err(|_| unavailable())?;
        let text = format!(
            "interceptor: approval {} pending: {} wants {} {} (rule {rule}{}). \
             `interceptor approvals approve {}` or `deny {} --reason ...` within {} s",
            a.id,
            a.workload,
            a.method,
            a.url(),
            a.user
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            a.id,
            a.id,
            spec.timeout.as_secs()
        );
        tracing::warn!(approval = a.id, "{text}");
        if let Some(w) = &self.proxy.webhook {
            w.announce(text);
        }
        let outcome = match tokio::time::timeout(spec.timeout, rx).await {
            Ok(Ok(o)) => o,
            _ => Outcome::Expired,
        };
        held.answered = true;
        match outcome {
            Outcome::Approved { by } => {
                rec.reason = format!("approved by {by} (approval {})", a.id);
                Ok(())
            }
            Outcome::Denied { by, reason } => Err(Refusal::new(Why::ApprovalDenied, format!("denied by {by}: {reason} (approval {})", a.id)).by_rule(d.rule.clone())),
            Outcome::Interrupted => Err(Refusal::new(Why::ApprovalInterrupted, format!(
                    "the interceptor is restarting; approval {} was not decided, send the request again",
                    a.id
                )).by_rule(d.rule.clone())),
            Outcome::Expired => {
                self.proxy.approvals.forget(a.id);
                if let Ok(Some(cur)) = store.approval(a.id)
                    && cur.state == State::Pending
                {
                    a.state = State::Expired;
                    a.decided_ms = Some(store::now_ms());
                    a.approver = Some("timeout".into());
                    let _ = store.put_approval(&a);
                }
                Err(Refusal::new(Why::ApprovalExpired, format!(
                        "no approver answered within {} s (approval {})",
                        spec.timeout.as_secs(),
                        a.id
                    )).by_rule(d.rule.clone()))
            }
        }
    }
}
