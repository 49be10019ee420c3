// kstatus prints the status that sigs.k8s.io/cli-utils/pkg/kstatus/status (the library Flux's
// kustomize-controller and helm-controller, kpt and cli-utils use to judge whether a resource is
// healthy) computes for one Kubernetes object read from stdin as YAML or JSON.
//
// Output (one line of JSON): {"status":"Current|InProgress|Failed|Terminating|NotFound|Unknown","message":"..."}
//
// Built by hack/build-tools.sh; used by tests/packaging.rs on GpuPools written by the live operator.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// YAML to JSON, then JSON decoded the way client-go does (integers as int64, which the
	// accessors status.Compute uses require).
	data, err := yaml.YAMLToJSON(input)
	if err != nil {
		fail("parsing the object: %v", err)
	}
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(data, &obj); err != nil {
		fail("parsing the object: %v", err)
	}
	if len(obj) == 0 {
		fail("no object on stdin")
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		fail("status.Compute: %v", err)
	}
	out, err := json.Marshal(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
