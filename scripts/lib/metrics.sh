# Reading a replica's Prometheus page over bash's /dev/tcp (no curl needed),
# sourced by cluster.sh, scale.sh, scale-mass-failure.sh and heap-profile.sh.
# Plain HTTP only: with mutual TLS the metrics port asks for a certificate.
#
# The page is read by grep and tr, in blocks: a bash `read` loop takes a
# socket a byte at a time, and the raft series come after up to 10,000
# utilization series (1.2 MB), which took ~3.5 s a call and made a restart
# look seconds slower than it was (BENCHMARKS.md, "Session 13").

# metric_at PORT NAME: the value of NAME's first series on 127.0.0.1:PORT,
# or nothing (no answer, no such series, or no whole page within 2 s).
metric_at() {
  local port=$1 name=$2
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  timeout 2 grep -a -m 1 "^$name{" <&3 | awk '{ sub(/\r$/, ""); print $NF }' || true
  exec 3<&- 3>&-
}

# metrics_page PORT: the whole answer (headers, then the page) without
# carriage returns, read for at most 5 s.
metrics_page() {
  local port=$1
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  timeout 5 tr -d '\r' <&3 || true
  exec 3<&- 3>&-
}
