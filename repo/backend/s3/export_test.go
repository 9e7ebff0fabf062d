package s3

// SetSinglePutMax sets the largest object saved with one PUT until the
// returned function restores it.
func SetSinglePutMax(n int) (restore func()) {
	old := singlePutMax
	singlePutMax = n
	return func() { singlePutMax = old }
}
