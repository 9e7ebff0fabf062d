// Package all links every backend implementation into a binary: each
// registers its location scheme with backend.Register when imported, so
// backend.Open and backend.Create know them all. Only the commands (and
// tests) import it; libraries take a backend.Backend.
//
// A new backend is one package that registers its scheme in init plus one
// import line here.
package all

import (
	// Each import registers a scheme.
	_ "github.com/vmvault/vmvault/repo/backend/local"
	_ "github.com/vmvault/vmvault/repo/backend/s3"
)
