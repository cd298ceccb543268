//! How a connection runs its streams: one wake-up and one pass per fan-out, a self-waking stream
//! run again at once, and the ready list's slots (listed once, reused, never run by a stale wake).

use super::*;
use crate::transport::wakes::Batch;
use hyper::rt::Executor;
use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::{task::Wake, time::Duration};
use tokio::sync::mpsc;

/// The connection task's waker: counts how often the task would be scheduled.
#[derive(Default)]
struct Scheduled(AtomicUsize);

impl Wake for Scheduled {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Scheduled {
    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection that never finishes and counts its polls.
struct Connection(usize);

impl Future for Connection {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.0 += 1;
        Poll::Pending
    }
}

fn pass(streams: &mut ConnectionStreams, connection: &mut Connection, waker: &Waker) {
    let gate = FlushGate::default();
    let done = streams.poll_with(Pin::new(connection), &gate, &mut Context::from_waker(waker));
    assert!(done.is_pending());
}

/// A stream that counts its polls, keeps its waker where the test can wake it, and finishes
/// once `finish` is set.
fn counted(
    polls: &Arc<AtomicUsize>,
    waker: &Arc<Mutex<Option<Waker>>>,
    finish: &Arc<AtomicUsize>,
) -> impl Future<Output = ()> + Send + 'static {
    let (polls, waker, finish) = (polls.clone(), waker.clone(), finish.clone());
    std::future::poll_fn(move |cx| {
        polls.fetch_add(1, Ordering::Relaxed);
        *waker.lock().unwrap() = Some(cx.waker().clone());
        if finish.load(Ordering::Relaxed) > 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    })
}

#[test]
fn a_batch_of_deliveries_wakes_the_connection_once_and_one_pass_runs_every_stream() {
    let mut streams = ConnectionStreams::new();
    let executor = streams.executor();
    let received = Arc::new(AtomicUsize::new(0));
    let mut queues = Vec::new();
    for _ in 0..25 {
        let (tx, mut rx) = mpsc::channel::<()>(4);
        let received = received.clone();
        executor.execute(async move {
            while rx.recv().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
        queues.push(tx);
    }
    let scheduled = Arc::new(Scheduled::default());
    let waker = Waker::from(scheduled.clone());
    let mut connection = Connection(0);
    pass(&mut streams, &mut connection, &waker);
    assert_eq!(streams.len(), 25);

    // A fan-out on another thread, as a room does.
    let fan_out = queues.clone();
    std::thread::spawn(move || {
        let _batch = Batch::hold();
        for tx in &fan_out {
            tx.try_send(()).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(scheduled.count(), 1, "one wake-up per fan-out");

    pass(&mut streams, &mut connection, &waker);
    assert_eq!(received.load(Ordering::Relaxed), 25, "every stream ran");
    assert_eq!(connection.0, 2, "in one pass over the connection");
    assert_eq!(scheduled.count(), 1, "and nothing left for later");

    drop(queues);
    pass(&mut streams, &mut connection, &waker);
    assert!(streams.is_empty(), "finished streams leave the set");
}

#[test]
fn a_stream_that_wakes_itself_runs_again_in_the_same_pass() {
    let mut streams = ConnectionStreams::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    streams.executor().execute(std::future::poll_fn(move |cx| {
        // Like a stream granted send capacity while it runs: woken by its own run.
        if counted.fetch_add(1, Ordering::Relaxed) < 3 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(())
    }));
    let scheduled = Arc::new(Scheduled::default());
    pass(
        &mut streams,
        &mut Connection(0),
        &Waker::from(scheduled.clone()),
    );
    assert_eq!(runs.load(Ordering::Relaxed), 4);
    assert!(streams.is_empty());
    assert_eq!(scheduled.count(), 0);
}

#[test]
fn a_stream_that_always_wakes_itself_lets_the_others_run_and_ends_the_pass() {
    let mut streams = ConnectionStreams::new();
    let executor = streams.executor();
    let restless = Arc::new(AtomicUsize::new(0));
    let runs = restless.clone();
    executor.execute(std::future::poll_fn(move |cx| {
        runs.fetch_add(1, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        Poll::<()>::Pending
    }));
    let (polls, waker, finish) = Default::default();
    executor.execute(counted(&polls, &waker, &finish));
    let scheduled = Arc::new(Scheduled::default());
    let mut connection = Connection(0);
    pass(
        &mut streams,
        &mut connection,
        &Waker::from(scheduled.clone()),
    );
    assert_eq!(polls.load(Ordering::Relaxed), 1, "the other stream ran");
    assert!(restless.load(Ordering::Relaxed) > 1, "run again at once");
    assert_eq!(scheduled.count(), 1, "the rest is for another turn");
}

#[tokio::test]
async fn a_turn_runs_a_budgets_worth_of_streams_and_the_connection_comes_back_for_the_rest() {
    let mut streams = ConnectionStreams::new();
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let runs = runs.clone();
        streams.executor().execute(async move {
            runs.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<()>().await;
        });
    }
    let counted = runs.clone();
    // The connection's task, with tokio's budget for each of its turns.
    let connection = tokio::spawn(async move {
        let gate = FlushGate::default();
        let mut connection = Connection(0);
        let mut after_each_turn = Vec::new();
        std::future::poll_fn(|cx| {
            let _ = streams.poll_with(Pin::new(&mut connection), &gate, cx);
            after_each_turn.push(counted.load(Ordering::Relaxed));
            match after_each_turn.last() {
                Some(1000) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
        .await;
        after_each_turn
    });
    let after_each_turn = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("woken again for the streams left")
        .unwrap();
    assert!(
        after_each_turn.len() > 1 && after_each_turn[0] < 1000,
        "{after_each_turn:?}: the other tasks get a turn in between"
    );
    assert_eq!(runs.load(Ordering::Relaxed), 1000, "every stream ran once");
}

#[test]
fn a_stream_woken_many_times_before_it_runs_is_listed_and_run_once() {
    let mut streams = ConnectionStreams::new();
    let (polls, waker, finish) = Default::default();
    streams.executor().execute(counted(&polls, &waker, &finish));
    let scheduled = Arc::new(Scheduled::default());
    let connection_waker = Waker::from(scheduled.clone());
    let mut connection = Connection(0);
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(polls.load(Ordering::Relaxed), 1);

    let stream_waker = waker.lock().unwrap().clone().unwrap();
    for _ in 0..10 {
        stream_waker.wake_by_ref();
    }
    assert_eq!(streams.ready.listed(), 1, "listed once");
    assert_eq!(scheduled.count(), 1, "the connection woken once");
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(polls.load(Ordering::Relaxed), 2, "run once");
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(polls.load(Ordering::Relaxed), 2, "and not again");
}

#[test]
fn a_finished_streams_slot_is_reused_and_its_late_wake_ups_run_nothing() {
    let mut streams = ConnectionStreams::new();
    let executor = streams.executor();
    let scheduled = Arc::new(Scheduled::default());
    let connection_waker = Waker::from(scheduled.clone());
    let mut connection = Connection(0);
    let (first_polls, first_waker, first_finish) = Default::default();
    executor.execute(counted(&first_polls, &first_waker, &first_finish));
    pass(&mut streams, &mut connection, &connection_waker);
    let late = first_waker.lock().unwrap().take().unwrap();
    first_finish.store(1, Ordering::Relaxed);
    late.wake_by_ref();
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(first_polls.load(Ordering::Relaxed), 2);
    assert!(streams.is_empty());

    let (polls, waker, finish) = Default::default();
    executor.execute(counted(&polls, &waker, &finish));
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    assert_eq!(streams.slots.tasks.len(), 1, "the free slot was taken");

    let woken = scheduled.count();
    late.wake_by_ref();
    late.wake();
    assert!(streams.ready.listed() == 0, "nothing listed");
    assert_eq!(scheduled.count(), woken, "nor the connection woken");
    pass(&mut streams, &mut connection, &connection_waker);
    assert_eq!(
        polls.load(Ordering::Relaxed),
        1,
        "the slot's new stream did not run"
    );
}

/// Counts its drops.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn dropping_the_streams_drops_every_task_and_the_ready_list() {
    let mut streams = ConnectionStreams::new();
    let executor = streams.executor();
    let dropped = Arc::new(AtomicUsize::new(0));
    // Holds its own waker, as a stream whose channel it waits on is its own.
    let guard = Dropped(dropped.clone());
    let own = Mutex::new(None::<Waker>);
    executor.execute(std::future::poll_fn(move |cx| {
        let _ = &guard;
        *own.lock().unwrap() = Some(cx.waker().clone());
        Poll::<()>::Pending
    }));
    // Hands its waker out, as a stream does to h2's store.
    let (polls, waker, finish) = Default::default();
    executor.execute(counted(&polls, &waker, &finish));
    let scheduled = Arc::new(Scheduled::default());
    pass(
        &mut streams,
        &mut Connection(0),
        &Waker::from(scheduled.clone()),
    );
    // Opened and never run, holding another stream's waker: as a stream's task holds h2's
    // store, and the store the wakers of the connection's other streams.
    let other = waker.lock().unwrap().take().unwrap();
    let guard = Dropped(dropped.clone());
    executor.execute(async move {
        let _held = (guard, other);
        std::future::pending::<()>().await;
    });
    let list = Arc::downgrade(&streams.ready);
    drop(executor);
    drop(streams);
    assert_eq!(dropped.load(Ordering::Relaxed), 2, "every task dropped");
    assert!(list.upgrade().is_none(), "and the list with them");
}
