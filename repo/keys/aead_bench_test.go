package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

func benchAEAD(b *testing.B, a cipher.AEAD) {
	buf := make([]byte, 128<<10)
	rand.Read(buf)
	nonce := make([]byte, a.NonceSize())
	out := make([]byte, 0, len(buf)+16)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		out = a.Seal(out[:0], nonce, buf, nil)
	}
}

func BenchmarkAESGCM(b *testing.B) {
	k := make([]byte, 32)
	c, _ := aes.NewCipher(k)
	g, _ := cipher.NewGCM(c)
	benchAEAD(b, g)
}

func BenchmarkXChaCha20Poly1305(b *testing.B) {
	a, _ := chacha20poly1305.NewX(make([]byte, 32))
	benchAEAD(b, a)
}
