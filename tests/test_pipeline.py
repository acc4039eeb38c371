"""The plugin API as a user meets it: decorate functions, name inputs by parameters, load the
pipeline from a module or a file, and get a clear error for every mistake."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from eventpipe import Pipeline, PipelineDefinitionError, Schema, load_pipeline


def sales_pipeline() -> Pipeline:
    """Two process steps, analytics on them and analytics of analytics, declared out of order."""
    pipeline = Pipeline("sales")

    @pipeline.process
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.process(expects={"order_id": "int64", "amount": None}, retries=2)
    def refunds(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def dashboard(daily_report: pd.DataFrame, revenue: pd.DataFrame) -> pd.DataFrame:
        return daily_report

    @pipeline.analytics
    def daily_report(revenue: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
        return revenue

    @pipeline.analytics(retries=1, retry_delay_seconds=0.5)
    def revenue(orders: pd.DataFrame, refunds: pd.DataFrame) -> pd.DataFrame:
        return orders

    @pipeline.analytics
    def refund_rate(refunds: pd.DataFrame) -> pd.DataFrame:
        return refunds

    return pipeline


# -- a valid pipeline --------------------------------------------------------------------------


def test_a_valid_pipeline_validates_and_knows_its_steps() -> None:
    pipeline = sales_pipeline()

    pipeline.validate()

    assert [s.name for s in pipeline.process_steps] == ["orders", "refunds"]
    assert pipeline.steps["revenue"].inputs == ("orders", "refunds")
    assert pipeline.steps["revenue"].kind == "analytics"
    assert pipeline.steps["revenue"].retries == 1
    assert pipeline.steps["revenue"].retry_delay_seconds == 0.5
    assert pipeline.steps["refunds"].expects == Schema({"order_id": "int64", "amount": None})
    assert pipeline.steps["orders"].expects is None
    assert repr(pipeline).startswith("Pipeline('sales'")


def test_decorators_return_the_function_unchanged() -> None:
    pipeline = Pipeline("shop")

    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw.assign(seen=True)

    assert pipeline.process(orders) is orders
    frame = pd.DataFrame({"a": [1]})
    assert orders(frame)["seen"].tolist() == [True]


def test_analytics_order_puts_every_step_after_its_inputs() -> None:
    order = [s.name for s in sales_pipeline().analytics_order()]

    assert sorted(order) == ["daily_report", "dashboard", "refund_rate", "revenue"]
    assert order.index("revenue") < order.index("daily_report") < order.index("dashboard")


def test_downstream_lists_every_dependent_analytics_step() -> None:
    pipeline = sales_pipeline()

    assert pipeline.downstream("orders") == {"revenue", "daily_report", "dashboard"}
    assert pipeline.downstream("refunds") == {
        "revenue",
        "daily_report",
        "dashboard",
        "refund_rate",
    }
    assert pipeline.downstream("revenue") == {"daily_report", "dashboard"}
    assert pipeline.downstream("dashboard") == set()


# -- definition errors -------------------------------------------------------------------------


def test_an_unknown_parameter_name_is_reported_with_the_step_and_the_name() -> None:
    pipeline = Pipeline("sales")

    @pipeline.process
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def revenue(ordres: pd.DataFrame) -> pd.DataFrame:
        return ordres

    with pytest.raises(PipelineDefinitionError) as info:
        pipeline.validate()
    message = str(info.value)
    assert "'revenue'" in message
    assert "'ordres'" in message
    assert "orders" in message  # the known steps are listed, so the typo is obvious

    with pytest.raises(PipelineDefinitionError, match="ordres"):
        pipeline.analytics_order()


def test_a_cycle_between_analytics_is_reported_with_its_steps() -> None:
    pipeline = Pipeline("sales")

    @pipeline.process
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def forecast(orders: pd.DataFrame, budget: pd.DataFrame) -> pd.DataFrame:
        return orders

    @pipeline.analytics
    def budget(forecast: pd.DataFrame) -> pd.DataFrame:
        return forecast

    with pytest.raises(PipelineDefinitionError, match="cycle") as info:
        pipeline.validate()
    assert "forecast" in str(info.value)
    assert "budget" in str(info.value)


def test_an_analytics_step_that_reads_itself_is_a_cycle() -> None:
    pipeline = Pipeline("sales")

    @pipeline.process
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def running_total(running_total: pd.DataFrame) -> pd.DataFrame:
        return running_total

    with pytest.raises(PipelineDefinitionError, match=r"cycle.*running_total"):
        pipeline.validate()


def test_a_duplicate_step_name_is_refused_when_decorated() -> None:
    pipeline = Pipeline("sales")

    @pipeline.process
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    def again() -> None:
        @pipeline.analytics
        def orders(revenue: pd.DataFrame) -> pd.DataFrame:
            return revenue

    with pytest.raises(PipelineDefinitionError, match=r"'orders'.*already used"):
        again()
    assert pipeline.steps["orders"].kind == "process"


def test_a_step_named_raw_is_refused() -> None:
    pipeline = Pipeline("sales")

    with pytest.raises(PipelineDefinitionError, match="'raw' is reserved"):

        @pipeline.process
        def raw(raw: pd.DataFrame) -> pd.DataFrame:
            return raw


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("def orders(raw, extra):\n    return raw\n", "extra"),
        ("def orders(frame):\n    return frame\n", "frame"),
        ("def orders():\n    return None\n", "orders"),
    ],
)
def test_a_process_step_must_take_exactly_raw(source: str, named: str) -> None:
    pipeline = Pipeline("sales")
    namespace: dict[str, object] = {}
    exec(source, namespace)

    with pytest.raises(PipelineDefinitionError, match="exactly one parameter named 'raw'") as info:
        pipeline.process(namespace["orders"])
    assert "'orders'" in str(info.value)
    assert named in str(info.value)
    assert "orders" not in pipeline.steps


def test_star_args_are_refused() -> None:
    pipeline = Pipeline("sales")

    def combined(*frames: pd.DataFrame) -> pd.DataFrame:
        return pd.concat(frames)

    with pytest.raises(PipelineDefinitionError, match=r"'combined'.*\*args/\*\*kwargs"):
        pipeline.analytics(combined)


def test_star_star_kwargs_are_refused() -> None:
    pipeline = Pipeline("sales")

    def combined(orders: pd.DataFrame, **others: pd.DataFrame) -> pd.DataFrame:
        return orders

    with pytest.raises(PipelineDefinitionError, match=r"'combined'.*\*args/\*\*kwargs"):
        pipeline.analytics(combined)


def test_an_async_step_is_refused() -> None:
    pipeline = Pipeline("sales")

    async def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    with pytest.raises(PipelineDefinitionError, match=r"'orders'.*not async"):
        pipeline.process(orders)


def test_analytics_without_parameters_is_refused() -> None:
    pipeline = Pipeline("sales")

    def constant() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    with pytest.raises(PipelineDefinitionError, match=r"'constant'.*takes no parameters"):
        pipeline.analytics(constant)


def test_a_function_name_that_is_not_snake_case_is_refused() -> None:
    pipeline = Pipeline("sales")

    with pytest.raises(PipelineDefinitionError, match="lowercase snake_case"):
        pipeline.process(lambda raw: raw)


def test_negative_retries_are_refused() -> None:
    pipeline = Pipeline("sales")

    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    with pytest.raises(PipelineDefinitionError, match=r"'orders'.*retries"):
        pipeline.process(retries=-1)(orders)


def test_a_pipeline_without_a_process_step_is_refused() -> None:
    pipeline = Pipeline("sales")

    with pytest.raises(PipelineDefinitionError, match=r"'sales' has no @pipeline.process step"):
        pipeline.validate()


@pytest.mark.parametrize("name", ["Sales", "1sales", "sales-eu", "sales eu", "_sales", "", "日本"])
def test_an_invalid_pipeline_name_is_refused(name: str) -> None:
    with pytest.raises(PipelineDefinitionError, match="must start with a lowercase letter") as info:
        Pipeline(name)
    assert repr(name) in str(info.value)


# -- load_pipeline -----------------------------------------------------------------------------

SALES_MODULE = """
import pandas as pd

from eventpipe import Pipeline

pipeline = Pipeline("sales")


@pipeline.process
def orders(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.dropna()


@pipeline.analytics
def revenue(orders: pd.DataFrame) -> pd.DataFrame:
    return orders.groupby("region", as_index=False)["amount"].sum()


def helper() -> None:
    pass
"""


@pytest.fixture
def package_name() -> Iterator[str]:
    """A fresh importable package name; forgotten from ``sys.modules`` afterwards."""
    name = f"acme_pipelines_{uuid.uuid4().hex[:8]}"
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


@pytest.fixture(autouse=True)
def forget_loaded_files() -> Iterator[None]:
    """``load_pipeline`` registers file modules in ``sys.modules``; drop the ones a test added."""
    before = set(sys.modules)
    yield
    for module in set(sys.modules) - before:
        if module.startswith("eventpipe_user_"):
            del sys.modules[module]


def write_package(root: Path, package: str, modules: dict[str, str]) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / package / f"{module}.py").write_text(textwrap.dedent(source))


def test_load_from_package_module_and_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package_name: str
) -> None:
    write_package(tmp_path, package_name, {"sales": SALES_MODULE})
    monkeypatch.syspath_prepend(tmp_path)
    spec = f"{package_name}.sales:pipeline"

    pipeline = load_pipeline(spec)

    assert isinstance(pipeline, Pipeline)
    assert pipeline.name == "sales"
    assert list(pipeline.steps) == ["orders", "revenue"]
    assert pipeline.source == spec


def test_load_from_a_file_path(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "sales.py").write_text(SALES_MODULE)
    spec = f"{tmp_path}/pipelines/sales.py:pipeline"

    pipeline = load_pipeline(spec)

    assert pipeline.name == "sales"
    assert [s.name for s in pipeline.analytics_order()] == ["revenue"]
    assert pipeline.source == spec


def test_load_from_a_relative_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "sales.py").write_text(SALES_MODULE)
    monkeypatch.chdir(tmp_path)

    pipeline = load_pipeline("pipelines/sales.py:pipeline")

    assert list(pipeline.steps) == ["orders", "revenue"]


def test_loading_validates_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(SALES_MODULE.replace("revenue(orders:", "revenue(order:"))

    with pytest.raises(
        PipelineDefinitionError, match=r"'revenue'.*parameter 'order' names no step"
    ):
        load_pipeline(f"{tmp_path / 'broken.py'}:pipeline")


@pytest.mark.parametrize("spec", ["pipelines/sales.py", "sales_module", "sales.py:", ":pipeline"])
def test_a_spec_without_module_and_attribute_is_refused(spec: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=r"must look like 'package.module:name'"):
        load_pipeline(spec)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sales.py"

    with pytest.raises(PipelineDefinitionError, match="does not exist") as info:
        load_pipeline(f"{missing}:pipeline")
    assert str(missing) in str(info.value)


def test_a_missing_module_is_reported() -> None:
    with pytest.raises(PipelineDefinitionError, match="cannot import module") as info:
        load_pipeline("no_such_pipelines_x.sales:pipeline")
    assert "'no_such_pipelines_x.sales'" in str(info.value)


@pytest.mark.parametrize(
    ("attr", "kind"), [("helper", "function"), ("pd", "module"), ("absent", "NoneType")]
)
def test_an_attribute_that_is_not_a_pipeline_is_refused(
    tmp_path: Path, attr: str, kind: str
) -> None:
    (tmp_path / "sales.py").write_text(SALES_MODULE)

    with pytest.raises(PipelineDefinitionError, match=r"not an eventpipe.Pipeline") as info:
        load_pipeline(f"{tmp_path / 'sales.py'}:{attr}")
    assert f"{attr!r} is {kind}" in str(info.value)


# -- code versions -----------------------------------------------------------------------------


def test_code_version_follows_the_function_source(tmp_path: Path) -> None:
    path = tmp_path / "sales.py"
    path.write_text(SALES_MODULE)
    spec = f"{path}:pipeline"
    first = load_pipeline(spec)
    again = load_pipeline(spec)

    path.write_text(SALES_MODULE.replace("return raw.dropna()", "return raw.dropna().head(10)"))
    edited = load_pipeline(spec)

    assert first.steps["orders"].code_version == again.steps["orders"].code_version
    assert edited.steps["orders"].code_version != first.steps["orders"].code_version
    assert edited.steps["revenue"].code_version == first.steps["revenue"].code_version


def test_code_version_differs_between_different_functions() -> None:
    pipeline = sales_pipeline()

    versions = {step.code_version for step in pipeline.steps.values()}

    assert len(versions) == len(pipeline.steps)
    assert all(versions)


def test_an_explicit_version_is_the_code_version(tmp_path: Path) -> None:
    source = SALES_MODULE.replace("@pipeline.process\n", '@pipeline.process(version="2024.1")\n')
    path = tmp_path / "sales.py"
    path.write_text(source)
    before = load_pipeline(f"{path}:pipeline")

    path.write_text(source.replace("return raw.dropna()", "return raw.dropna().head(10)"))
    after = load_pipeline(f"{path}:pipeline")

    assert before.steps["orders"].code_version == "2024.1"
    assert after.steps["orders"].code_version == "2024.1"


HELPED = """
import functools

import pandas as pd

from eventpipe import Pipeline
import {helpers}
from {helpers} import Rates

pipeline = Pipeline("helped")


@pipeline.process
def orders(raw: pd.DataFrame) -> pd.DataFrame:
    return tidy(raw)


@pipeline.process
def refunds(raw: pd.DataFrame) -> pd.DataFrame:
    return raw[raw["amount"] < 0]


@pipeline.analytics
def revenue(orders: pd.DataFrame) -> pd.DataFrame:
    return {helpers}.total(orders) * Rates().factor()


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.dropna().head(limit())


@functools.cache
def limit() -> int:
    return LIMIT


LIMIT = 100
"""

HELPERS = """
FEE = 0.1


def total(frame):
    return frame[["amount"]].sum() * (1 - FEE)


class Rates:
    def factor(self):
        return 2
"""


@pytest.fixture
def helped(tmp_path: Path, package_name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pipeline file using a helper and a constant of its own, and a module of helpers."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{package_name}.py").write_text(HELPERS)
    path = tmp_path / "helped.py"
    path.write_text(HELPED.format(helpers=package_name))
    return path


def versions_of(pipeline: Pipeline) -> dict[str, str]:
    return {name: step.code_version for name, step in pipeline.steps.items()}


def test_a_code_version_covers_the_helpers_and_constants_of_its_own_file(helped: Path) -> None:
    spec = f"{helped}:pipeline"
    first = versions_of(load_pipeline(spec))
    assert versions_of(load_pipeline(spec)) == first  # stable

    source = helped.read_text()
    helped.write_text(source.replace("LIMIT = 100", "LIMIT = 50"))  # a constant a helper reads
    limit = versions_of(load_pipeline(spec))
    helped.write_text(source.replace("dropna().head", "dropna().tail"))  # the helper itself
    tail = versions_of(load_pipeline(spec))
    helped.write_text(source.replace("return LIMIT", "return LIMIT + 1"))  # behind a cache
    cached = versions_of(load_pipeline(spec))

    for edited in (limit, tail, cached):
        assert edited["orders"] != first["orders"]  # the step that uses it
        assert edited["refunds"] == first["refunds"]  # not the others
        assert edited["revenue"] == first["revenue"]
    assert limit["orders"] != tail["orders"]


def test_a_code_version_covers_the_functions_classes_and_constants_of_user_modules(
    helped: Path, package_name: str
) -> None:
    from eventpipe.run.context import cached_pipeline

    spec = f"{helped}:pipeline"
    pipeline = cached_pipeline(spec)
    first = versions_of(pipeline)
    helpers = str((helped.parent / f"{package_name}.py").resolve())
    assert helpers in pipeline.code_files  # what `up` watches
    assert str(helped.resolve()) in pipeline.code_files
    assert not any("site-packages" in f or "/eventpipe/" in f for f in pipeline.code_files)

    module = helped.parent / f"{package_name}.py"
    for old, new in [("FEE = 0.1", "FEE = 0.2"), ("return 2", "return 3")]:
        module.write_text(module.read_text().replace(old, new))
        now = versions_of(cached_pipeline(spec))  # the edited module is reloaded
        assert now["revenue"] != first["revenue"], old
        assert now["orders"] == first["orders"], old
        assert now["refunds"] == first["refunds"], old
        first = now
    assert cached_pipeline(spec) is cached_pipeline(spec)  # nothing changed: not reloaded


def test_what_installed_packages_provide_is_not_part_of_a_code_version() -> None:
    from eventpipe.codeversion import code_digest

    def step(raw: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([raw, textwrap.dedent("x")])  # type: ignore[list-item]

    digest, files = code_digest(step)
    assert files == (str(Path(__file__).resolve()),)
    assert len(digest) == 16
