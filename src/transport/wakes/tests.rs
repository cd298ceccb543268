//! Tests of the batched and relayed wake-ups of connection tasks.

use super::*;
use std::{sync::atomic::AtomicUsize, task::Waker};

/// A task waker that counts its wake-ups.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn connection() -> (Arc<ConnectionWaker>, Arc<Counting>) {
    let counting = Arc::new(Counting::default());
    let connection = Arc::new(ConnectionWaker::default());
    connection.task.register(&Waker::from(counting.clone()));
    (connection, counting)
}

#[test]
fn outside_a_batch_a_wake_up_goes_through_at_once() {
    let (connection, counting) = connection();
    Waker::from(connection).wake_by_ref();
    assert_eq!(counting.0.load(Ordering::Relaxed), 1);
}

#[test]
fn a_batch_wakes_each_connection_once_when_it_ends() {
    let (a, a_count) = connection();
    let (b, b_count) = connection();
    {
        let _outer = Batch::hold();
        {
            let _inner = Batch::hold();
            for _ in 0..25 {
                Waker::from(a.clone()).wake_by_ref();
            }
        }
        Waker::from(b.clone()).wake_by_ref();
        assert_eq!(
            a_count.0.load(Ordering::Relaxed),
            0,
            "held until the outer end"
        );
        assert_eq!(b_count.0.load(Ordering::Relaxed), 0);
    }
    assert_eq!(a_count.0.load(Ordering::Relaxed), 1);
    assert_eq!(b_count.0.load(Ordering::Relaxed), 1);
    // The next batch holds again.
    let (c, c_count) = connection();
    let batch = Batch::hold();
    c.task.register(&Waker::from(c_count.clone()));
    Waker::from(c.clone()).wake_by_ref();
    assert_eq!(c_count.0.load(Ordering::Relaxed), 0);
    drop(batch);
    assert_eq!(c_count.0.load(Ordering::Relaxed), 1);
}

#[test]
fn a_wake_up_during_a_pass_is_seen_by_the_pass_or_wakes_the_task_after_it() {
    let (connection, counting) = connection();
    let cx_waker = Waker::from(counting.clone());
    let cx = Context::from_waker(&cx_waker);
    connection.begin();
    Waker::from(connection.clone()).wake_by_ref();
    assert_eq!(
        counting.0.load(Ordering::Relaxed),
        0,
        "not scheduled while running"
    );
    assert!(connection.take_woken(), "the pass sees it");
    assert!(!connection.take_woken());
    connection.end(&cx);
    assert_eq!(
        counting.0.load(Ordering::Relaxed),
        0,
        "seen: nothing left to do"
    );

    connection.begin();
    Waker::from(connection.clone()).wake_by_ref();
    connection.end(&cx);
    assert_eq!(
        counting.0.load(Ordering::Relaxed),
        1,
        "unseen: the task runs again"
    );
    Waker::from(connection).wake_by_ref();
    assert_eq!(counting.0.load(Ordering::Relaxed), 2, "idle: wakes at once");
}

type Report = (usize, std::thread::ThreadId);

/// Tells the test which connection was woken, and on which thread.
struct Reporting(usize, std::sync::Mutex<std::sync::mpsc::Sender<Report>>);

impl Wake for Reporting {
    fn wake(self: Arc<Self>) {
        let here = std::thread::current().id();
        let _ = self.1.lock().unwrap().send((self.0, here));
    }
}

#[test]
fn a_batch_hands_another_actor_threads_connections_to_that_threads_relay() {
    use std::time::Duration;
    let runtime = crate::runtime::ActorRuntime::start(2).unwrap();
    let arbiters = runtime.arbiters();
    let (home, other) = (arbiters.next().clone(), arbiters.next().clone());
    let (woken_tx, woken) = std::sync::mpsc::channel();
    let (made_tx, made) = std::sync::mpsc::channel();
    home.spawn(async move {
        let connections: Vec<Arc<ConnectionWaker>> = (0..10)
            .map(|i| {
                let connection = Arc::new(ConnectionWaker::here());
                let task = Reporting(i, std::sync::Mutex::new(woken_tx.clone()));
                connection.task.register(&Waker::from(Arc::new(task)));
                connection
            })
            .collect();
        made_tx
            .send((connections, std::thread::current().id()))
            .unwrap();
    });
    let (connections, home_thread) = made.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(connections.iter().all(|c| c.home.is_some()), "homed");
    other.spawn(async move {
        let _batch = Batch::hold();
        for connection in &connections {
            for _ in 0..3 {
                Waker::from(connection.clone()).wake_by_ref();
            }
        }
    });
    let mut seen: Vec<usize> = (0..10)
        .map(|_| {
            let (i, thread) = woken.recv_timeout(Duration::from_secs(5)).expect("relayed");
            assert_eq!(thread, home_thread, "woken by the relay on its own thread");
            i
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "each connection once");
    drop(runtime);
    assert!(woken.try_recv().is_err(), "and no more");
}

#[test]
fn a_batch_holds_only_its_own_threads_wake_ups() {
    let (connection, counting) = connection();
    let _batch = Batch::hold();
    std::thread::spawn(move || Waker::from(connection).wake_by_ref())
        .join()
        .unwrap();
    assert_eq!(counting.0.load(Ordering::Relaxed), 1);
}

#[test]
fn a_relay_whose_thread_stopped_keeps_nothing_handed_over() {
    use std::time::Duration;
    let runtime = crate::runtime::ActorRuntime::start(1).unwrap();
    let (made_tx, made) = std::sync::mpsc::channel();
    runtime.arbiters().next().spawn(async move {
        made_tx.send(Arc::new(ConnectionWaker::here())).unwrap();
    });
    let connection = made.recv_timeout(Duration::from_secs(5)).unwrap();
    let relay = connection.home.clone().expect("homed");
    drop(runtime);
    assert!(
        relay.gone.load(Ordering::SeqCst),
        "its task went with its thread"
    );
    {
        let _batch = Batch::hold();
        Waker::from(connection.clone()).wake_by_ref();
    }
    assert!(
        relay.pending.lock().unwrap().is_empty(),
        "not kept: the waker and its relay would keep each other alive"
    );
}

#[test]
fn a_signal_says_once_that_it_woke_the_task_and_wakes_it() {
    let signal = Arc::new(Signal::default());
    let task = Arc::new(Counting::default());
    let task_waker = Waker::from(task.clone());
    let cx = Context::from_waker(&task_waker);
    assert!(
        signal.take(&cx),
        "woken to start with, so the watch is polled once"
    );
    assert!(!signal.take(&cx), "then only when it woke the task");
    Waker::from(signal.clone()).wake_by_ref();
    assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken");
    assert!(signal.take(&cx));
    assert!(!signal.take(&cx));
}
