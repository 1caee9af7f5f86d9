//! Bookkeeping of operations: ids, what each waits for, and their
//! reports.

use super::*;

impl PoolState {
    pub(super) fn new_operation_id(&mut self) -> OperationId {
        self.next_operation += 1;
        OperationId(self.next_operation)
    }

    /// An attempt (or close) some operations may be waiting for has ended.
    pub(super) fn attempt_resolved(&mut self, attempt: AttemptId, connected: Option<ServerId>) {
        let mut finished = Vec::new();
        for op in &mut self.operations {
            if op.retry.is_some() {
                if let Some(server) = connected {
                    op.newly_connected.push(server);
                    finished.push((op.id, OperationEnd::Connected));
                }
            } else if op.waiting.remove(&attempt) {
                if let Some(server) = connected {
                    op.newly_connected.push(server);
                }
                if op.waiting.is_empty() {
                    finished.push((op.id, OperationEnd::Completed));
                }
            }
        }
        for (id, end) in finished {
            self.finish_operation(id, end);
        }
    }

    pub(super) fn finish_operation(&mut self, id: OperationId, end: OperationEnd) {
        let Some(position) = self.operations.iter().position(|op| op.id == id) else {
            return;
        };
        let op = self.operations.remove(position);
        self.timers.cancel(TimerKey::Operation(id));
        if op.retry.is_some() {
            self.forget_unwanted_retries();
        }
        tracing::debug!(operation = %id, kind = ?op.kind, ?end, connected = self.connected, "operation finished");
        self.notify(Notification::OperationFinished(OperationReport {
            id,
            kind: op.kind,
            end,
            connected: self.connected,
            newly_connected: op.newly_connected,
        }));
    }
}
