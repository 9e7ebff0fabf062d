# Sourced by the benchmarks that use object storage: MinIO on 127.0.0.1,
# erasure-coded over 4 directories below $W/minio, and s3proxy instances
# (scripts/s3proxy) in front of it that add latency and count requests.
# Needs $W and $BIN (with s3proxy built there) and minio on PATH.
#
#   minio_start            start MinIO (MINIO_ADDR), stopped on exit
#   proxy_start NAME LAT   a proxy with latency LAT (e.g. 0s, 20ms): sets
#                          PROXY_<NAME> (HOST:PORT) and CONTROL_<NAME>
#   counts NAME            "PUT n GET n ..." since the last call (resets)
#   servers_cpu            CPU seconds MinIO and the proxies used so far
export AWS_ACCESS_KEY_ID=vmvault-bench AWS_SECRET_ACCESS_KEY=vmvault-bench-not-a-secret
export MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY MINIO_CI_CD=1
BENCH_PIDS=()
bench_cleanup() { for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap bench_cleanup EXIT

servers_cpu() {
	local t=0 p f
	for p in "${BENCH_PIDS[@]}"; do
		# utime and stime, fields 14 and 15 of /proc/PID/stat (after the
		# command name in parentheses), in clock ticks.
		f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
		t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
	done
	python3 -c "print($t / $(getconf CLK_TCK))"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

minio_start() {
	command -v minio >/dev/null || { echo "bench: minio missing (GOBIN=/usr/local/bin go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c)" >&2; exit 1; }
	rm -rf "$W/minio" && mkdir -p "$W/minio"/d{1,2,3,4}
	local port; port=$(free_port)
	MINIO_ADDR=127.0.0.1:$port
	minio server --quiet --address "$MINIO_ADDR" --console-address "127.0.0.1:$(free_port)" "$W/minio/d{1...4}" >"$W/minio/log" 2>&1 &
	BENCH_PIDS+=($!)
	for _ in $(seq 1 240); do
		# Up when /ready answers 200 without saying the object layer is unavailable.
		local h; h=$(curl -si "http://$MINIO_ADDR/minio/health/ready" 2>/dev/null | tr -d '\r' || true)
		if [[ $h == "HTTP/1.1 200"* ]] && ! grep -qi '^x-minio-server-status: *unavailable' <<<"$h"; then
			return 0
		fi
		sleep 0.5
	done
	echo "bench: MinIO did not come up:" >&2; tail "$W/minio/log" >&2; exit 1
}

proxy_start() {
	local name=$1 lat=$2 port cport
	port=$(free_port); cport=$(free_port)
	"$BIN/s3proxy" -listen "127.0.0.1:$port" -control "127.0.0.1:$cport" -target "$MINIO_ADDR" -latency "$lat" 2>"$W/proxy-$name.log" &
	BENCH_PIDS+=($!)
	printf -v "PROXY_$name" '%s' "127.0.0.1:$port"
	printf -v "CONTROL_$name" '%s' "127.0.0.1:$cport"
	for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$cport/counts" >/dev/null && return 0; sleep 0.1; done
	echo "bench: s3proxy $name did not start" >&2; exit 1
}

counts() {
	local c="CONTROL_$1"
	curl -sf "http://${!c}/counts?reset=1" | tr '\n' ' '
}
