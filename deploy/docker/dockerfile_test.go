package docker

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stages splits the Dockerfile into its stages by name.
func stages(dockerfile string) map[string][]string {
	out := map[string][]string{}
	cur := ""
	from := regexp.MustCompile(`^FROM\s+(?:--platform=\S+\s+)?\S+(?:\s+AS\s+(\S+))?`)
	for _, l := range strings.Split(dockerfile, "\n") {
		if m := from.FindStringSubmatch(l); m != nil {
			cur = m[1]
		}
		if cur != "" {
			out[cur] = append(out[cur], l)
		}
	}
	return out
}

// buildPackages returns the packages of the first `go build` after marker.
func buildPackages(t *testing.T, text, marker string) []string {
	t.Helper()
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("%q not found", marker)
	}
	text = strings.ReplaceAll(text[i:], "\\\n", " ")
	line := text[strings.Index(text, "go build"):]
	line = line[:strings.Index(line, "\n")]
	var pkgs []string
	for _, f := range strings.Fields(line) {
		if strings.HasPrefix(f, "./") {
			pkgs = append(pkgs, f)
		}
	}
	return pkgs
}

func TestDockerfile(t *testing.T) {
	df := read(t, "Dockerfile")
	st := stages(df)

	t.Run("copies-every-workspace-module", func(t *testing.T) {
		work := read(t, filepath.Join("..", "..", "go.work"))
		use := regexp.MustCompile(`(?m)^\s*\./(\S+)\s*$`)
		for _, m := range use.FindAllStringSubmatch(work, -1) {
			d := m[1]
			want := "COPY " + d + "/go.mod " + d + "/go.sum " + d + "/"
			if !strings.Contains(df, want) {
				t.Errorf("Dockerfile lacks %q (module %s of go.work)", want, d)
			}
		}
	})
	t.Run("static-trimmed-stripped-build", func(t *testing.T) {
		for _, want := range []string{"CGO_ENABLED=0", "GOTOOLCHAIN=go1.26.10", `-trimpath -ldflags="-s -w"`} {
			if !strings.Contains(strings.Join(st["build"], "\n"), want) {
				t.Errorf("build stage lacks %s", want)
			}
		}
	})
	t.Run("same-binaries-as-make-images-bin", func(t *testing.T) {
		got := buildPackages(t, df, "FROM --platform=${BUILDPLATFORM} ${GO_IMAGE} AS build")
		want := buildPackages(t, read(t, filepath.Join("..", "..", "Makefile")), "\nimages-bin:")
		if len(got) != 4 {
			t.Errorf("Dockerfile builds %v; want the three services and the probe", got)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("Dockerfile vs make images-bin packages (-Dockerfile +Makefile):\n%s", diff)
		}
	})
	t.Run("multi-arch", func(t *testing.T) {
		// buildx builds one image per --platform: the build stage runs on
		// the builder's platform and cross-compiles for the target one,
		// which BuildKit passes in TARGETOS/TARGETARCH (a default would
		// build every image for one architecture).
		build := strings.Join(st["build"], "\n")
		for _, want := range []string{"FROM --platform=${BUILDPLATFORM} ${GO_IMAGE} AS build", "ARG TARGETOS\n", "ARG TARGETARCH\n", "GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build"} {
			if !strings.Contains(build+"\n", want) {
				t.Errorf("build stage lacks %q", want)
			}
		}
		mk := read(t, filepath.Join("..", "..", "Makefile"))
		if !regexp.MustCompile(`(?m)^IMAGE_ARCHES := amd64 arm64$`).MatchString(mk) {
			t.Errorf("make images-bin does not build amd64 and arm64")
		}
	})
	for _, svc := range []string{"audit", "broker", "keyguard"} {
		t.Run("image/"+svc, func(t *testing.T) {
			lines := append(slices.Clone(st["base"]), st[svc]...)
			text := strings.Join(lines, "\n")
			if len(st[svc]) == 0 {
				t.Fatalf("no stage %s", svc)
			}
			if !strings.Contains(df, "BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot") {
				t.Errorf("base is not distroless static nonroot")
			}
			if !strings.Contains(text, "USER 65532:65532") {
				t.Errorf("image does not run as the non-root user 65532")
			}
			if strings.Contains(text, "\nRUN ") {
				t.Errorf("final image runs commands: it has no shell")
			}
			for _, want := range []string{`ENTRYPOINT ["/` + svc + `"]`, "COPY --from=build /out/" + svc + " /" + svc, "/credmatrix-probe"} {
				if !strings.Contains(text, want) {
					t.Errorf("image lacks %q", want)
				}
			}
		})
	}
}
