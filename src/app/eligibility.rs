//! The store's view of who is eligible now, written from the processor's output events.

use std::time::Duration;

use crate::error::error_chain;
use crate::promo::{EligibilityEvent, EpochMs, TransitionKind};
use crate::store::{Eligibility, EligibilityChange, Store};
use crate::stream::processor::EmitHook;

/// Materialises eligibility events in the store, in batches, off the processing thread.
/// Returns the hook to give the processor and the writer task, which ends once the hook is dropped (the
/// processor has stopped) and every change sent through it is written.
pub fn eligibility_writer(store: Store) -> (EmitHook, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<EligibilityChange>(10_000);
    let hook: EmitHook = Box::new(move |event: &EligibilityEvent| {
        let change = match event.kind {
            TransitionKind::Enter => EligibilityChange::Enter(Eligibility {
                user_id: event.user_id.clone(),
                promotion_id: event.promotion_id.clone(),
                fence_id: event.fence_id.clone(),
                since_ms: event.event_ts.as_millis(),
                event_id: event.event_id.clone(),
            }),
            TransitionKind::Exit => EligibilityChange::Exit {
                user_id: event.user_id.clone(),
                promotion_id: event.promotion_id.clone(),
            },
        };
        // Blocks the processor when the store falls 10k changes behind: backpressure, not loss.
        let _ = sender.blocking_send(change);
    });
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(500);
        while receiver.recv_many(&mut batch, 500).await > 0 {
            // While the database is unreachable the batch is retried (the bounded channel then holds
            // the processor back): an outage delays the store's view, it does not lose changes.
            let mut wait = Duration::from_millis(100);
            loop {
                match store
                    .record_eligibility(&batch, EpochMs::now().as_millis())
                    .await
                {
                    Ok(()) => break,
                    Err(error) if error.is_unavailable() => {
                        tracing::warn!(error = %error_chain(&error), changes = batch.len(),
                            "database unavailable; retrying the eligibility batch in {wait:?}");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), changes = batch.len(),
                            "cannot record eligibility; batch dropped");
                        break;
                    }
                }
            }
            batch.clear();
        }
    });
    (hook, writer)
}
