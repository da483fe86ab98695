from fltac_secure.plan import DEMO_PLAN, load_plan


def test_demo_plan_loads():
    plan = load_plan(DEMO_PLAN)
    assert plan.federation == "demo"
    assert len(plan.tasks) == 4 and len(plan.roster) == 4
