//! Many concurrent callers, one call for all of them: each caller hands in its request and waits for its own
//! answer; one task takes every request waiting (up to a maximum) and answers them all with one call of its
//! function (one SQL statement, one commit, instead of one per caller).
//!
//! Nothing waits on purpose: a request that arrives while a call runs joins the next one, so a lone request is
//! answered as soon as it would be alone, and under load the calls grow by themselves.
//!
//! Bounded: at most `capacity` requests wait (callers beyond it wait to hand theirs in) and at most `max` go into
//! one call. A call that panics or answers the wrong number of responses answers no one of its batch
//! ([`Gone`]); the task goes on with the next batch.

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};

/// The request got no answer: the task is gone (shutting down) or its call failed without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batched call gave no answer for this request")]
pub struct Gone;

/// A handle to hand requests in; cheap to clone. The task stops once every handle is dropped.
pub struct Coalescer<Req, Resp> {
    tx: mpsc::Sender<(Req, oneshot::Sender<Resp>)>,
}

impl<Req, Resp> Clone for Coalescer<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the task. `call` gets the requests waiting, in the order they came, and answers one response per
    /// request in that order.
    pub fn start<F, Fut>(
        capacity: usize,
        max: usize,
        mut call: F,
    ) -> (Self, tokio::task::JoinHandle<()>)
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<(Req, oneshot::Sender<Resp>)>(capacity.max(1));
        let task = tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max);
            while rx.recv_many(&mut waiting, max).await > 0 {
                let (requests, answers): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                    std::mem::take(&mut waiting).into_iter().unzip();
                let count = requests.len();
                match AssertUnwindSafe(call(requests)).catch_unwind().await {
                    Ok(responses) if responses.len() == count => {
                        for (answer, response) in answers.into_iter().zip(responses) {
                            // A caller that stopped waiting does not need its answer.
                            let _ = answer.send(response);
                        }
                    }
                    Ok(responses) => tracing::error!(
                        requests = count,
                        responses = responses.len(),
                        "A batched call answered the wrong number of responses; its callers get none."
                    ),
                    Err(_) => tracing::error!(
                        requests = count,
                        "A batched call panicked; its callers get no answer."
                    ),
                }
            }
        });
        (Self { tx }, task)
    }

    /// Hands `request` in and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Resp, Gone> {
        let (answer, response) = oneshot::channel();
        self.tx.send((request, answer)).await.map_err(|_| Gone)?;
        response.await.map_err(|_| Gone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn callers_waiting_together_share_one_call_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let (c, _task) = Coalescer::start(100, 100, move |reqs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                reqs.into_iter().map(|r| r * 10).collect::<Vec<_>>()
            }
        });
        let answers = futures_util::future::join_all((0..50u32).map(|i| c.call(i))).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..50).map(|i| i * 10).collect::<Vec<_>>());
        // The first call takes what was there when it started; the rest wait and go together.
        assert!(calls.load(Ordering::SeqCst) <= 2, "{calls:?} calls");
    }

    #[tokio::test]
    async fn no_call_takes_more_than_max() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let (c, _task) = Coalescer::start(100, 7, move |reqs: Vec<u32>| {
            seen.lock().unwrap().push(reqs.len());
            async move { reqs }
        });
        let answers = futures_util::future::join_all((0..30u32).map(|i| c.call(i))).await;
        assert!(answers.iter().all(Result::is_ok));
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 30);
        assert!(sizes.iter().all(|&s| s <= 7), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_call_that_panics_or_miscounts_answers_its_batch_gone_and_the_next_batch_is_served() {
        let (c, _task) = Coalescer::start(10, 10, |reqs: Vec<u32>| async move {
            match reqs[0] {
                0 => panic!("boom"),
                1 => Vec::new(),
                _ => reqs,
            }
        });
        assert_eq!(c.call(0).await, Err(Gone));
        assert_eq!(c.call(1).await, Err(Gone));
        assert_eq!(c.call(2).await, Ok(2));
    }
}
