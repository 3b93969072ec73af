//! `lanet-bench`: latency, bandwidth, lane, detection and router benchmarks.
//!
//! Every benchmark prints its baseline beside it, measured in the same run (raw sockets,
//! sockperf, iperf3, perftest), as a ratio; see the TCP LND and health issues for the commands.
//!
//! Nothing is implemented here yet; the crate exists so the workspace shows the architecture.
