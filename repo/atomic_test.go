package repo

import "sync/atomic"

type atomicInt = atomic.Int64
