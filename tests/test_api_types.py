"""What a user's mypy sees of the newcomer API (issue 11, items 6 and 9): `ctx.need(T)` and
`ctx[T]` are typed `T`, and a `@pc.builder` function keeps its own signature when called, while
still fitting a workflow's `builders` list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TYPED_USE = '''\
import polaris_celery as pc
from pydantic import BaseModel

class In(BaseModel):
    v: int = 0

class Out(BaseModel):
    v: int = 0

class Make(pc.Builder):
    consumes = [In]
    produces = Out

    def process(self, ctx: pc.BuilderContext) -> Out:
        reveal_type(ctx.need(In))
        reveal_type(ctx[In])
        return Out(v=ctx.need(In).v + ctx[In].v)

@pc.builder(max_retries=1)
def make(i: In, o: Out | None = None) -> Out:
    return Out(v=i.v)

@pc.builder
def bare(i: In) -> Out:
    return Out(v=i.v)

reveal_type(make(In()))
reveal_type(bare(In()))
make("not a datum")

class Flow(pc.Workflow):
    builders = [Make, make, bare]
    target = Out
'''


def test_mypy_infers_the_types_of_need_and_of_a_function_builder_call(tmp_path: Path) -> None:
    (tmp_path / "use.py").write_text(TYPED_USE)
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                           "--cache-dir", str(ROOT / ".mypy_cache"), str(tmp_path / "use.py")],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [ln.split(": ", 1)[1] for ln in done.stdout.splitlines() if ": " in ln]
    assert lines == [
        'note: Revealed type is "use.In"',
        'note: Revealed type is "use.In"',
        'note: Revealed type is "use.Out"',
        'note: Revealed type is "use.Out"',
        'error: Argument 1 to "FunctionBuilder" has incompatible type "str"; expected "In"  '
        '[arg-type]',
    ], done.stdout + done.stderr
