"""The original simplepyq README's seven examples, run unchanged but for network calls
(replaced by local functions) and the 60-second delay (0.3 s here, so the test waits)."""

import time

from conftest import wait_for

from simplepyq import DelayException, SimplePyQ


def test_1_basic_task_queuing_with_channels(db):
    scraped = []

    def scrape_url(args):
        url = args["url"]
        scraped.append(url)

    scheduler = SimplePyQ(db)
    scheduler.add_channel("scrape", scrape_url, max_workers=2)
    scheduler.enqueue("scrape", {"url": "https://example.com"})
    scheduler.enqueue("scrape", {"url": "https://example.org"})
    scheduler.start()
    wait_for(lambda: len(scraped) == 2, what="both URLs scraped in the background")
    scheduler.stop()
    assert sorted(scraped) == ["https://example.com", "https://example.org"]
    assert scheduler.counts()["done"] == 2


def test_2_task_retries_for_resilience(db):
    responses = iter([500, 503, 200])
    fetched = []

    def fetch_data(args):
        url = args["url"]
        status_code = next(responses)  # requests.get(url).status_code
        if status_code != 200:
            raise Exception("Failed to fetch data")
        fetched.append(url)

    scheduler = SimplePyQ(db)
    scheduler.add_channel("fetch", fetch_data)
    scheduler.enqueue("fetch", {"url": "https://api.example.com/data"}, retries=3)
    scheduler.run_until_complete()
    assert fetched == ["https://api.example.com/data"]
    [task] = scheduler.tasks("fetch")
    assert (task.status, task.attempts, task.retries_left) == ("done", 3, 1)


def test_3_dynamic_task_deferral_with_delay_exception(db):
    calls = []

    def call_api(args):
        url = args["url"]
        calls.append(time.monotonic())
        if len(calls) == 1:  # response.status_code == 403
            raise DelayException(0.3)

    scheduler = SimplePyQ(db)
    scheduler.add_channel("api", call_api)
    scheduler.enqueue("api", {"url": "https://api.example.com/rate_limit"})
    scheduler.start()
    wait_for(lambda: scheduler.counts()["delayed"] == 1 or len(calls) == 2, what="the deferral")
    wait_for(lambda: len(calls) == 2, what="the deferred task to run again by itself")
    scheduler.stop()
    assert calls[1] - calls[0] >= 0.29
    [task] = scheduler.tasks("api")
    assert task.status == "done"
    assert task.retries_left == 0  # a delay uses no retry


def test_4_clearing_failed_tasks(db):
    runs = []

    def risky_task(args):
        runs.append(args)
        raise Exception("Task failed intentionally")

    scheduler = SimplePyQ(db)
    scheduler.add_channel("risky", risky_task)
    scheduler.enqueue("risky", {"data": "test"}, retries=1)
    scheduler.run_until_complete()
    assert len(runs) == 2
    assert scheduler.counts("risky")["failed"] == 1
    scheduler.clear_failed("risky")
    assert scheduler.counts("risky") == dict.fromkeys(
        ["pending", "running", "delayed", "done", "failed", "waiting"], 0
    )


attempts = 0


def test_5_requeuing_failed_tasks(db):
    succeeded = []

    def flaky_task(args):
        global attempts
        if attempts < 2:  # Fail on first attempt
            attempts += 1
            raise Exception("Temporary failure")
        succeeded.append(args)

    scheduler = SimplePyQ(db)
    scheduler.add_channel("flaky", flaky_task)
    scheduler.enqueue("flaky", {}, retries=0)
    scheduler.run_until_complete()
    assert scheduler.counts("flaky")["failed"] == 1
    scheduler.requeue_failed("flaky", retries=1)
    scheduler.run_until_complete()
    assert succeeded == [{}]
    assert scheduler.counts("flaky")["done"] == 1


def test_6_removing_a_channel(db):
    processed = []

    def temp_task(args):
        processed.append(args["data"])

    scheduler = SimplePyQ(db)
    scheduler.add_channel("temp", temp_task)
    scheduler.enqueue("temp", {"data": "test"})
    scheduler.run_until_complete()
    scheduler.remove_channel("temp")
    assert processed == ["test"]
    assert scheduler.tasks("temp") == []
    # The channel is gone: it may be added again.
    scheduler.add_channel("temp", temp_task)


def test_7_running_until_completion(db):
    processed = []

    def process_data(args):
        processed.append(args["data"])

    scheduler = SimplePyQ(db)
    scheduler.add_channel("data", process_data)
    scheduler.enqueue("data", {"data": "item1"})
    scheduler.enqueue("data", {"data": "item2"})
    scheduler.run_until_complete()
    assert sorted(processed) == ["item1", "item2"]
