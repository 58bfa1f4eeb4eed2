#!/usr/bin/env bash
# make demo-test: everything about android_demo/ and ios_demo/ that can be built and checked on
# Linux without an Android SDK, Xcode or a device. Installs what it needs; see android_demo/README.md.
#   1. Debian's junit4 + gson (and a JDK if javac is missing); tree-sitter grammars from PyPI
#   2. fresh bundles of the embedded tiny model: android, ios (iOS 18), ios --min-ios 17, ios as a package chain
#   3. golden traces of a few requests through the Python runtime, for the three bundles
#   4. javac the Android engine and run its JUnit tests (replaying the android traces)
#   5. tree-sitter parse of every .java/.kts/.swift file; model names vs the fresh manifests
# With --traces-only it stops after 3 (what `swift test` on a Mac needs: make demo-traces).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-build/demo}
JAVA_LIBS="/usr/share/java/gson.jar /usr/share/java/junit4.jar /usr/share/java/hamcrest-core.jar"
SECONDS=0
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }

step "dependencies"
missing=0
for jar in $JAVA_LIBS; do [ -f "$jar" ] || missing=1; done
command -v javac >/dev/null || missing=1
if [ "$missing" = 1 ]; then
  apt-get update -qq
  apt-get install -y -qq junit4 libgoogle-gson-java $(command -v javac >/dev/null || echo default-jdk-headless)
fi
"$PY" -c "import tree_sitter, tree_sitter_java, tree_sitter_kotlin, tree_sitter_swift" 2>/dev/null \
  || "$PY" -m pip install --quiet "tree-sitter==0.26.1" "tree-sitter-java==0.23.5" "tree-sitter-kotlin==1.1.0" "tree-sitter-swift==0.7.4"

[ -n "${DEMO_SKIP_EXPORT:-}" ] || {
step "export the embedded model (android, ios 18, ios 17)"
mkdir -p "$OUT"
CLI=("$PY" -m autoglm_export.cli)
# The ExecuTorch lowering is mostly one core: the Core ML exports run beside it.
"${CLI[@]}" android --force --decode-step --out "$OUT/android" > "$OUT/export-android.log" 2>&1 &
android_pid=$!
"${CLI[@]}" ios --force --out "$OUT/ios" > "$OUT/export-ios.log" 2>&1 || { tail -5 "$OUT/export-ios.log"; exit 1; }
"${CLI[@]}" ios --force --min-ios 17 --quant int8 --out "$OUT/ios17" > "$OUT/export-ios17.log" 2>&1 || { tail -5 "$OUT/export-ios17.log"; exit 1; }
# The decoder as a chain of packages (as at 9B), for the apps' chaining code: a package per layer plus the head.
"${CLI[@]}" ios --force --decoder-package-params 1 --out "$OUT/ios-chain" > "$OUT/export-ios-chain.log" 2>&1 || { tail -5 "$OUT/export-ios-chain.log"; exit 1; }
wait "$android_pid" || { tail -5 "$OUT/export-android.log"; exit 1; }
}

step "golden traces"
rm -rf "$OUT/traces"
mkdir -p "$OUT/traces"
for target in android ios ios17 ios-chain; do  # runtime logs go to a file, shown if tracing fails
  "$PY" tests/demo/golden_traces.py "$OUT/$target" "$OUT/traces/$target" 2> "$OUT/traces/$target.log" \
    || { tail -5 "$OUT/traces/$target.log"; exit 1; }
done

if [ "${1:-}" = "--traces-only" ]; then step "bundles and traces in $OUT"; exit 0; fi

step "compile the Android engine (javac) and run its JUnit tests"
CP=$(echo $JAVA_LIBS | tr ' ' ':')
rm -rf "$OUT/classes" && mkdir -p "$OUT/classes"
javac -encoding UTF-8 -Xlint:all -Werror -d "$OUT/classes" -cp "$CP" \
  $(find android_demo/engine/src/main/java android_demo/engine/src/test/java -name '*.java')
TESTS=$(cd android_demo/engine/src/test/java && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
java -cp "$OUT/classes:$CP" -Dautoglm.bundle="$OUT/android" -Dautoglm.traces="$OUT/traces/android" \
  org.junit.runner.JUnitCore $TESTS

step "parse the app sources, check model names"
"$PY" tests/demo/check_sources.py --android "$OUT/android" --ios "$OUT/ios" --ios "$OUT/ios17" --ios "$OUT/ios-chain"
step "demo-test passed"
