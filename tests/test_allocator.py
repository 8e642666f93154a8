"""The CLI's malloc settings (cifarlab/allocator.py): freed tensor memory is reused."""

import resource
import sys

import pytest
import torch

from cifarlab.allocator import configure_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    assert configure_allocator()

    def page_faults_of_a_fresh_buffer() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.empty(64 * 2**20 // 4)  # 64 MB: over glibc's largest mmap threshold
        buffer.fill_(1.0)  # touch every page
        del buffer
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # The heap grows for the first few (glibc sorts its freed chunks lazily), then holds.
    faults = [page_faults_of_a_fresh_buffer() for _ in range(16)]
    assert max(faults[-4:]) < 100, faults  # faulted in anew: 16,384 pages of 4 KB each time
