// Command s3proxy sits between a benchmark and a MinIO: it forwards every
// request unchanged (the Host header too, so signatures stay valid), adds
// a fixed latency to each, and counts requests by method. The counts are
// read (and reset with ?reset=1) at http://CONTROL/counts as lines
// "METHOD N". scripts/bench-s3.sh and scripts/bench-copy.sh use it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve S3 on")
	control := flag.String("control", "", "address of the counts endpoint")
	target := flag.String("target", "", "the S3 server, HOST:PORT")
	latency := flag.Duration("latency", 0, "delay added to every request")
	verbose := flag.Bool("v", false, "log every request's method, path and query")
	flag.Parse()
	if *target == "" || *control == "" {
		log.Fatal("s3proxy: -target and -control are required")
	}
	var mu sync.Mutex
	counts := map[string]int{}
	u := &url.URL{Scheme: "http", Host: *target}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true}
	director := rp.Director
	rp.Director = func(r *http.Request) {
		host := r.Host
		director(r)
		r.Host = host // signed
	}
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/counts", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			var ms []string
			for m := range counts {
				ms = append(ms, m)
			}
			sort.Strings(ms)
			for _, m := range ms {
				fmt.Fprintf(w, "%s %d\n", m, counts[m])
			}
			if r.URL.Query().Get("reset") != "" {
				counts = map[string]int{}
			}
		})
		log.Fatal(http.ListenAndServe(*control, mux))
	}()
	log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		counts[r.Method]++
		mu.Unlock()
		if *verbose {
			log.Printf("%s %s?%s %s", r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Range"))
		}
		if *latency > 0 {
			time.Sleep(*latency)
		}
		rp.ServeHTTP(w, r)
	})))
}
