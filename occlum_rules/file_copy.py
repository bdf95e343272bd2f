"""Copy one file's bytes to another inside the kernel: the one place that knows how.

``copy_file_range`` first: where the file system can share extents (XFS, btrfs) the copy
costs no data movement at all, and elsewhere it is an in-kernel copy like ``sendfile``,
which is the fallback for kernels or file-system pairs that refuse it (EXDEV before Linux
5.3, ENOSYS, EINVAL, EOPNOTSUPP, ESPIPE for pipes). Callers copy in user space when neither
works, because only they know whether they must hash on the way.
"""

from __future__ import annotations

import errno
import os

_REFUSED = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ESPIPE)


def kernel_copy(fd_in: int, fd_out: int, size: int) -> bool:
    """Copy ``size`` bytes from the start of ``fd_in`` to the empty ``fd_out``. False when
    the kernel refused (or the source got shorter): ``fd_out`` is then empty again and
    positioned at 0, so the caller's own copy starts clean."""
    for copy in (_copy_file_range, _sendfile):
        try:
            if copy(fd_in, fd_out, size):
                return True
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
        os.lseek(fd_out, 0, os.SEEK_SET)
        os.ftruncate(fd_out, 0)
    return False


def _copy_file_range(fd_in: int, fd_out: int, size: int) -> bool:
    done = 0
    while done < size:
        sent = os.copy_file_range(fd_in, fd_out, size - done, done, done)
        if sent == 0:
            return False
        done += sent
    return True


def _sendfile(fd_in: int, fd_out: int, size: int) -> bool:
    done = 0
    while done < size:
        sent = os.sendfile(fd_out, fd_in, done, size - done)
        if sent == 0:
            return False
        done += sent
    return True
