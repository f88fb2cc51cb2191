#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace lizard {

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp, std::strerror(errno));
  try {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("cannot write '{}': {}", tmp, std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0) fail("cannot sync '{}': {}", tmp, std::strerror(errno));
    const int rc = ::close(fd);
    fd = -1;
    if (rc != 0) fail("cannot close '{}': {}", tmp, std::strerror(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename '{}' to '{}': {}", tmp, path, std::strerror(errno));
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
}

}  // namespace lizard
