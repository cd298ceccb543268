//! `chat-bench`: the project's load generator (work in progress).

fn main() {}
